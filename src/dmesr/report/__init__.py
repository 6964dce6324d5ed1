"""Results of an experiment grid: results.csv, results.md (tables, p-values) and plots."""

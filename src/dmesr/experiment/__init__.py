"""Experiment grids: backbone × variant × seed cells, run in parallel, resumable."""

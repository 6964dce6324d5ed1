"""Data: readers for real formats, preparation (SPEC §2), and the prepared-dataset API."""

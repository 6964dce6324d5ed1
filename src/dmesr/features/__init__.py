"""Frozen encoders and the id-aligned feature store (SPEC §1.1)."""

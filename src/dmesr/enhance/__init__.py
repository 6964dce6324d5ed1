"""Stage A (SPEC §1.1): three-way prompting of an MLLM, cached and resumable."""

"""CPU thread set-up for the frozen encoders.

On a small machine shared with other jobs, OpenMP's default busy-waiting makes torch with
2 threads 4-5x slower than with 1 (measured: all-MiniLM-L6-v2 fell from ~600 to ~130
texts/s when other processes held the cores). A passive wait policy keeps 2 threads at
~580 texts/s under the same load. The policy must be set before torch loads OpenMP, so it
is set here, before the first `import torch`, unless the user chose one.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def torch_with_threads(threads: int | None) -> Any:
    """Import torch (after choosing the OpenMP wait policy) and set its intra-op threads."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch

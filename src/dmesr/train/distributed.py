"""Data-parallel training under torchrun (SPEC §6): one process per rank, gloo on CPU.

    torchrun --nproc-per-node 4 -m dmesr.cli train --config ... --out runs/x

Every rank holds the whole model. Each global batch (`train.batch_size` sequences, in an
order that rank 0 draws and broadcasts) is split across the ranks; gradients are averaged
with one all-reduce of a flat buffer before the optimiser step, so the replicas stay equal.
Rank 0 alone evaluates, checkpoints and logs, and broadcasts its state after every epoch,
so every rank stops at the same epoch. Without torchrun (WORLD_SIZE unset or 1) nothing
here runs and training is bit for bit the single-process one.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from dmesr.errors import DmesrError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env() -> Ranks:
    """The ranks torchrun set up (WORLD_SIZE, RANK, MASTER_ADDR/PORT), joining the process
    group on first use; a single process when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # CPU tensors; NCCL needs a GPU path (not here)
        atexit.register(_leave)
    return Ranks(dist.get_rank(), dist.get_world_size())


def _leave() -> None:
    """Leave together: a rank that tears gloo down while its peer still finishes the last
    collective can abort the peer at exit (`terminate called without an active
    exception`, in 2 of 6 test-suite runs here)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    with contextlib.suppress(RuntimeError):  # bounded: a dead peer must not hold us at exit
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
    dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank > 0's dropout/mask stream: distinct per rank, fixed per run."""
    return (seed * 1_000_003 + rank * 7_919) % (2**63)


def broadcast_parameters(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (replicas start equal)."""
    import torch.distributed as dist

    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def broadcast_tensor(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    dist.broadcast(tensor, src=0)
    return tensor


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` (picklable) on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(ranks: Ranks, work: Callable[[], T]) -> T:
    """`work()` on rank 0, its result on every rank; when it fails on rank 0 the other
    ranks raise too (instead of waiting for a broadcast that never comes)."""
    if not ranks.active:
        return work()
    if ranks.main:
        try:
            value = work()
        except BaseException as exc:
            broadcast_object(("error", f"{type(exc).__name__}: {exc}"))
            raise
        broadcast_object(("ok", value))
        return value
    kind, value = broadcast_object(("", None))
    if kind == "error":
        raise DmesrError(f"rank 0 failed: {value}")
    return value


def average_gradients(params: Iterable[nn.Parameter], has_data: bool) -> None:
    """Mean of the gradients over the ranks that had rows in this step, as one flat
    all-reduce (a rank with an empty share adds zeros and is not counted). A parameter
    that got no gradient on any rank keeps `grad = None`, as it would in one process."""
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel())
             for p in params]
    flags = torch.tensor([p.grad is not None for p in params] + [has_data],
                         dtype=grads[0].dtype if grads else torch.float32)
    flat = torch.cat([*grads, flags])
    dist.all_reduce(flat)
    count = max(float(flat[-1]), 1.0)
    offset, n_values = 0, flat.numel() - flags.numel()
    for i, p in enumerate(params):
        n = p.numel()
        if flat[n_values + i] > 0:
            p.grad = (flat[offset:offset + n] / count).view_as(p).clone()
        offset += n


def all_mean(total: float, n: int) -> float:
    """The mean of per-rank sums `total` over per-rank counts `n`."""
    import torch.distributed as dist

    pair = torch.tensor([total, float(n)], dtype=torch.float64)
    dist.all_reduce(pair)
    return float(pair[0] / max(pair[1], 1.0))

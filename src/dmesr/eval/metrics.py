"""Ranks -> metrics (SPEC §3). Everything is computed from one int rank per user.

Rank convention (pessimistic ties): rank = 1 + number of *other* candidate items whose
score is >= the target's score. A model that gives every item the same score therefore
ranks each target last, never first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def ranks_from_scores(scores: Tensor, target_col: Tensor, excluded: Tensor | None = None) -> Tensor:
    """Pessimistic 1-based rank of `target_col` in each row of `scores` [B, C].

    `excluded` [B, C] bool marks candidates that do not compete (history, padding); the
    target itself is never excluded, whatever `excluded` says.
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    t = scores[rows, target_col]
    beats = scores >= t[:, None]
    if excluded is not None:
        beats &= ~excluded
    beats[rows, target_col] = False
    return beats.sum(dim=1) + 1


def metric_names(ks: list[int], mrr_k: int) -> list[str]:
    return [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + [f"MRR@{mrr_k}"]


def per_user_metrics(ranks: np.ndarray, ks: list[int], mrr_k: int) -> dict[str, np.ndarray]:
    """name -> float64 [n_users] vector (the inputs to paired significance tests)."""
    r = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"HR@{k}"] = (r <= k).astype(np.float64)
    for k in ks:
        out[f"NDCG@{k}"] = np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    out[f"MRR@{mrr_k}"] = np.where(r <= mrr_k, 1.0 / r, 0.0)
    return out


@dataclass(frozen=True)
class Groups:
    """Boolean user masks for long-tail analysis, with the thresholds that define them."""

    masks: dict[str, np.ndarray]
    thresholds: dict[str, float]


def make_groups(
    train_lengths: np.ndarray, targets: np.ndarray, popularity: np.ndarray,
    head_user_frac: float, head_item_frac: float,
) -> Groups:
    """Head users: the longest `head_user_frac` of training sequences; head items: the top
    `head_item_frac` of items (1..I) by training popularity. Ties at a threshold go to head.
    """
    user_thr = float(np.quantile(train_lengths, 1.0 - head_user_frac))
    pop = np.asarray(popularity)[1:]
    n_head = max(1, round(head_item_frac * len(pop)))
    item_thr = float(np.sort(pop)[::-1][n_head - 1])
    head_user = train_lengths >= user_thr
    head_item = np.asarray(popularity)[targets] >= item_thr
    return Groups(
        masks={
            "head_user": head_user, "tail_user": ~head_user,
            "head_item": head_item, "tail_item": ~head_item,
        },
        thresholds={
            "head_user_min_train_len": user_thr, "head_item_min_train_count": item_thr,
            "head_user_frac": head_user_frac, "head_item_frac": head_item_frac,
        },
    )


def summarise(
    ranks: np.ndarray, ks: list[int], mrr_k: int, prefix: str, groups: Groups | None = None
) -> dict[str, float]:
    """Flat `prefix.METRIC` means (and `prefix.GROUP.METRIC` for each group)."""
    per_user = per_user_metrics(ranks, ks, mrr_k)
    out = {f"{prefix}.{name}": float(v.mean()) for name, v in per_user.items()}
    for gname, mask in (groups.masks.items() if groups else []):
        out[f"{prefix}.{gname}.n_users"] = int(mask.sum())
        for name, v in per_user.items():
            out[f"{prefix}.{gname}.{name}"] = float(v[mask].mean()) if mask.any() else float("nan")
    return out

"""Full and sampled ranking of a model on the valid/test split (SPEC §3).

Full ranking scores every item for a chunk of users with one matrix product; history
items are excluded by default (switchable), padding always, the target never. Chunks
bound memory to about `2**26` scores whatever the catalogue size. Sampled ranking
uses the 100 negatives saved with the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from dmesr.data.dataset import PreparedDataset
from dmesr.eval.metrics import (
    Groups,
    make_groups,
    metric_names,
    per_user_metrics,
    ranks_from_scores,
    summarise,
)
from dmesr.io import save_npy, write_json
from dmesr.train.config import EvalConfig

Mode = Literal["full", "sampled"]
MAX_SCORES_PER_CHUNK = 2**26


@dataclass(frozen=True)
class EvalSplit:
    """Everything needed to rank one split, as tensors (row r = user r + 1)."""

    name: str
    seq: Tensor  # int64 [U, L] left-padded histories (last L items)
    targets: Tensor  # int64 [U]
    hist_indptr: np.ndarray  # int64 [U + 1] full (untruncated) histories, CSR
    hist_items: Tensor  # int64 concatenated histories
    negatives: Tensor | None  # int64 [U, n_neg]


def load_eval_split(ds: PreparedDataset, name: Literal["valid", "test"], max_len: int) -> EvalSplit:
    view = ds.split(name)
    try:
        neg = torch.from_numpy(ds.negatives(name)[1:].astype(np.int64))
    except FileNotFoundError:
        neg = None
    return EvalSplit(
        name=name,
        seq=torch.from_numpy(view.padded(max_len)),
        targets=torch.from_numpy(view.targets.astype(np.int64)),
        hist_indptr=view.indptr,
        hist_items=torch.from_numpy(view.items.astype(np.int64)),
        negatives=neg,
    )


def dataset_groups(ds: PreparedDataset, targets: np.ndarray, cfg: EvalConfig) -> Groups:
    return make_groups(
        ds.split("train").lengths, targets, ds.train_item_popularity(),
        cfg.head_user_frac, cfg.head_item_frac,
    )


def _excluded(split: EvalSplit, lo: int, hi: int, n_cols: int, history: bool) -> Tensor:
    mask = torch.zeros(hi - lo, n_cols, dtype=torch.bool)
    mask[:, 0] = True  # padding
    if history:
        a, b = split.hist_indptr[lo], split.hist_indptr[hi]
        lengths = torch.from_numpy(np.diff(split.hist_indptr[lo : hi + 1]))
        rows = torch.repeat_interleave(torch.arange(hi - lo), lengths)
        mask[rows, split.hist_items[a:b]] = True
    return mask


@torch.no_grad()
def full_ranks(
    model: nn.Module, split: EvalSplit, exclude_history: bool = True, chunk_users: int = 256,
    n_items: int | None = None,
) -> np.ndarray:
    """Pessimistic rank of each user's target among all items: int64 [U]."""
    n_users = split.seq.shape[0]
    n_cols = (n_items if n_items is not None else model.n_items) + 1
    chunk = max(1, min(chunk_users, MAX_SCORES_PER_CHUNK // n_cols))
    out = []
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        scores = model.full_sort_predict({"seq": split.seq[lo:hi]}).float()
        excluded = _excluded(split, lo, hi, n_cols, exclude_history)
        out.append(ranks_from_scores(scores, split.targets[lo:hi], excluded))
    return torch.cat(out).numpy()


@torch.no_grad()
def sampled_ranks(model: nn.Module, split: EvalSplit, chunk_users: int = 256) -> np.ndarray:
    """Rank of each target among itself + its saved negatives: int64 [U]."""
    if split.negatives is None:
        raise FileNotFoundError(f"no saved negatives for split '{split.name}'")
    cand = torch.cat([split.targets[:, None], split.negatives], dim=1)
    out = []
    for lo in range(0, cand.shape[0], chunk_users):
        hi = min(cand.shape[0], lo + chunk_users)
        scores = model.predict({"seq": split.seq[lo:hi]}, cand[lo:hi]).float()
        out.append(ranks_from_scores(scores, torch.zeros(hi - lo, dtype=torch.long)))
    return torch.cat(out).numpy()


def evaluate(
    model: nn.Module, split: EvalSplit, cfg: EvalConfig, groups: Groups | None = None,
    modes: tuple[Mode, ...] = ("full", "sampled"),
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Flat metrics (`{split}.{mode}[.{group}].{metric}`) and per-mode rank vectors."""
    was_training = model.training
    model.eval()
    try:
        ranks: dict[str, np.ndarray] = {}
        if "full" in modes:
            ranks["full"] = full_ranks(model, split, cfg.exclude_history, cfg.chunk_users)
        if "sampled" in modes and split.negatives is not None:
            ranks["sampled"] = sampled_ranks(model, split, cfg.chunk_users)
    finally:
        model.train(was_training)
    metrics: dict[str, float] = {}
    for mode, r in ranks.items():
        metrics.update(summarise(r, cfg.ks, cfg.mrr_k, f"{split.name}.{mode}", groups))
    return metrics, ranks


def save_per_user(
    folder: Path, split: str, ranks: dict[str, np.ndarray], cfg: EvalConfig
) -> None:
    """per_user/{split}.{mode}.ranks.npy (int64 [U]) and .metrics.npy (float64 [U, M])."""
    names = metric_names(cfg.ks, cfg.mrr_k)
    for mode, r in ranks.items():
        save_npy(folder / f"{split}.{mode}.ranks.npy", r.astype(np.int64))
        per_user = per_user_metrics(r, cfg.ks, cfg.mrr_k)
        save_npy(folder / f"{split}.{mode}.metrics.npy", np.stack([per_user[n] for n in names], 1))
    write_json(folder / "columns.json", {"metrics": names, "rows": "user id - 1"})

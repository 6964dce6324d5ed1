"""Top-K recommendations from a trained run, through the model contract's
`full_sort_predict`.

A `Recommender` holds one run's model and the item/user keys of the dataset it was
trained on. It ranks the whole catalogue for known users (after their whole history:
train, validation and test items) or for ad-hoc histories of item keys. Items already in
the history are left out unless asked otherwise. Equal scores are ordered by item id, so a
list is reproducible; users are scored in chunks, so memory stays bounded for large
catalogues (as in evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from dmesr.data.dataset import SplitView
from dmesr.errors import DmesrError
from dmesr.eval.evaluate import MAX_SCORES_PER_CHUNK
from dmesr.train.commands import TrainedRun, load_trained_run

if TYPE_CHECKING:
    import pandas as pd

UnknownItems = Literal["error", "skip"]
AsOf = Literal["all", "valid", "test"]


@dataclass(frozen=True)
class TopK:
    """Item ids [B, k] and their scores [B, k]; rows with fewer candidates than k end in
    id 0 with score -inf (the history covered nearly the whole catalogue)."""

    items: np.ndarray
    scores: np.ndarray
    targets: np.ndarray | None = None  # [B] held-out item ids when ranked as of valid/test


class Recommender:
    def __init__(self, trained: TrainedRun) -> None:
        self.run = trained
        self.model = trained.model
        self.max_len = trained.config.model.max_len
        ds = trained.dataset
        self.n_items = ds.n_items
        items = ds.items
        ids = items["item"].to_numpy(np.int64)
        self.item_keys = np.full(self.n_items + 1, "", dtype=object)
        self.item_keys[ids] = items["item_key"].astype(str).to_numpy(object)
        self._item_id = {key: i for i, key in enumerate(self.item_keys) if i > 0}
        label = next((f for f in ds.text_fields if f in items.columns), None)
        self.label_field = label
        self.labels = None
        if label:
            self.labels = np.full(self.n_items + 1, None, dtype=object)
            values = items[label].astype(object)
            self.labels[ids] = values.where(values.notna(), None).to_numpy(object)
        self._user_id = {str(k): int(u) for u, k in zip(ds.users["user"], ds.users["user_key"],
                                                        strict=True)}
        self._splits: dict[str, SplitView] = {}

    @classmethod
    def from_run(cls, run: str | Path, checkpoint: str = "best") -> Recommender:
        return cls(load_trained_run(Path(run), checkpoint))

    @property
    def user_keys(self) -> list[str]:
        return list(self._user_id)

    def describe(self) -> dict[str, Any]:
        cfg = self.run.config
        return {"run": str(self.run.path.resolve()), "checkpoint": self.run.checkpoint.name,
                "dataset": self.run.dataset.name,
                "dataset_hash": self.run.dataset.content_hash,
                "backbone": cfg.model.backbone, "encoder": cfg.model.encoder.type,
                "items": self.n_items, "users": len(self._user_id), "max_len": self.max_len,
                "features": self._feature_files()}

    def _feature_files(self) -> dict[str, str] | None:
        """sha256 prefix of each feature view the model reads (None: ID-only, or a run
        from before runs recorded them): which MLLM descriptions this server answers with."""
        record = self.run.record.get("features")
        if not record:
            return None
        return {view: files["features_sha256"][:12] for view, files in record["views"].items()}

    # ---- ids ---------------------------------------------------------------------------
    def user_ids(self, user_keys: Sequence[object]) -> np.ndarray:
        ids = [self._user_id.get(str(k), 0) for k in user_keys]
        unknown = [str(k) for k, u in zip(user_keys, ids, strict=True) if u == 0]
        if unknown:
            raise DmesrError(
                f"{len(unknown)} unknown user key(s) for dataset {self.run.dataset.name}: "
                f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''} (keys are the "
                "source ids in users.parquet; pass their history with --history instead)")
        return np.asarray(ids, dtype=np.int64)

    def item_ids(self, history: Sequence[object], unknown: UnknownItems = "error",
                 where: str = "history") -> list[int]:
        ids = []
        for pos, key in enumerate(history):
            item = self._item_id.get(str(key))
            if item is None:
                if unknown == "skip":
                    continue
                raise DmesrError(
                    f"{where}, position {pos}: item key '{key}' is not in the catalogue of "
                    f"dataset {self.run.dataset.name} ({self.n_items} items); the model has no "
                    "embedding for it (--skip-unknown, or skip_unknown: true over HTTP, leaves "
                    "it out)")
            ids.append(item)
        return ids

    # ---- ranking -----------------------------------------------------------------------
    def for_users(self, user_keys: Sequence[object], k: int = 10, exclude_seen: bool = True,
                  as_of: AsOf = "all") -> TopK:
        """Top-k after each known user's whole history (`as_of="all"`), or as the model
        ranked at evaluation time: before the validation or test item (`targets` then
        holds that item, so a list can be checked against the metrics)."""
        rows = self.user_ids(user_keys) - 1  # split rows are user id - 1
        view = self._splits.get(as_of)
        if view is None:
            view = self._splits[as_of] = self.run.dataset.split(as_of)
        lo, hi = view.indptr[rows], view.indptr[rows + 1]
        histories = [view.items[a:b] for a, b in zip(lo, hi, strict=True)]
        if as_of == "all":
            return self.for_histories(histories, k, exclude_seen)
        # as evaluation does: a held-out item bought before as well stays a candidate
        targets = view.targets[rows].astype(np.int64)
        top = self.for_histories(histories, k, exclude_seen, spare=targets)
        return TopK(top.items, top.scores, targets)

    def for_histories(self, histories: Sequence[Sequence[int] | np.ndarray], k: int = 10,
                      exclude_seen: bool = True, spare: np.ndarray | None = None) -> TopK:
        """Top-k after each history of item ids (oldest first); `spare` [B] is an item per
        history that stays a candidate even when the history holds it."""
        if k < 1:
            raise DmesrError(f"k must be at least 1, got {k}")
        lengths = np.fromiter((len(h) for h in histories), np.int64, len(histories))
        indptr = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = (np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
                 if indptr[-1] else np.zeros(0, np.int64))
        bad = np.flatnonzero((items < 1) | (items > self.n_items))
        if bad.size:
            row = int(np.searchsorted(indptr, bad[0], side="right")) - 1
            raise DmesrError(f"history {row}: item ids must be in 1..{self.n_items} "
                             "(use item_ids() to map item keys)")
        k = min(k, self.n_items)
        chunk = max(1, min(256, MAX_SCORES_PER_CHUNK // (self.n_items + 1)))
        tops = [self._top_k(indptr[lo:lo + chunk + 1], items, k, exclude_seen,
                            None if spare is None else spare[lo:lo + chunk])
                for lo in range(0, len(histories), chunk)]
        if not tops:
            return TopK(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        return TopK(np.concatenate([t[0] for t in tops]), np.concatenate([t[1] for t in tops]))

    @torch.no_grad()
    def _top_k(self, indptr: np.ndarray, items: np.ndarray, k: int, exclude_seen: bool,
               spare: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for the histories items[indptr[r]:indptr[r + 1]] of one chunk (CSR)."""
        n = len(indptr) - 1
        view = SplitView(np.arange(n), indptr - indptr[0], items[indptr[0]:indptr[-1]],
                         np.zeros(n, np.int32))
        seq = torch.from_numpy(view.padded(self.max_len))  # as evaluation feeds the model
        # DMESR's encoder keeps its item table while in eval mode: no item fusion per call
        scores = self.model.full_sort_predict({"seq": seq})[:, : self.n_items + 1]
        # a copy: a model may return a view of its own buffers (Pop expands one row)
        scores = scores.to(torch.float32, copy=True)
        scores[:, 0] = float("-inf")
        if exclude_seen:
            rows = torch.from_numpy(np.repeat(np.arange(n), view.lengths))
            seen = torch.from_numpy(view.items)
            if spare is not None:
                kept = seen != torch.from_numpy(spare)[rows]
                rows, seen = rows[kept], seen[kept]
            scores[rows, seen] = float("-inf")
        # a stable sort keeps equal scores in item-id order: reproducible lists
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        top = scores.gather(1, order)
        order = order.masked_fill(top == float("-inf"), 0)
        return order.numpy(), top.numpy()

    def ranked_items(self, top: TopK, row: int) -> list[dict[str, Any]]:
        """Row `row` of `top` as [{rank, item_key, score, <label field>}] (for JSON)."""
        out = []
        for rank, (item, score) in enumerate(zip(top.items[row], top.scores[row],
                                                 strict=True), start=1):
            if item == 0:
                break
            entry = {"rank": rank, "item_key": self.item_keys[item], "score": float(score)}
            if self.labels is not None:
                entry[self.label_field] = self.labels[item]
            out.append(entry)
        return out

    # ---- tables ------------------------------------------------------------------------
    def table(self, top: TopK, owners: Sequence[object], owner: str = "user_key"
              ) -> pd.DataFrame:
        """One row per (owner, rank): owner key, rank (1-based), item_key, score and the
        item's first text field (e.g. its title); rows past a short list are dropped."""
        import pandas as pd

        n, k = top.items.shape
        keep = top.items.ravel() > 0
        items = top.items.ravel()[keep]
        frame = {owner: np.repeat(np.asarray([str(o) for o in owners], dtype=object), k)[keep],
                 "rank": np.tile(np.arange(1, k + 1), n)[keep],
                 "item_key": self.item_keys[items],
                 "score": top.scores.ravel()[keep].astype(np.float64)}
        if self.labels is not None:
            frame[self.label_field] = self.labels[items]
        if top.targets is not None:
            targets = np.repeat(top.targets, k)[keep]
            frame["target_item_key"] = self.item_keys[targets]
            frame["hit"] = items == targets
        return pd.DataFrame(frame)

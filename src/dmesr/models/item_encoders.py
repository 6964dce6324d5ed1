"""Item encoders: where a backbone's item embeddings come from.

An encoder maps item ids to `n_views` embeddings of width `view_dim` each. Backbones never
see anything but these vectors, so ID tables, frozen/trainable pretrained feature tables
(+ adapters) and, later, the DMESR fusion module plug in without touching a backbone.

Ids: 0 is padding (its embedding is all zeros in every view); 1..n_items are items;
`mask_id = n_items + 1` is BERT4Rec's [MASK] token, available once `enable_mask_token()`
has been called (a learnable vector per view, never part of `all_items()`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dmesr.errors import ArtifactMismatchError
from dmesr.models.dropout import FastDropout


class ItemEncoder(nn.Module):
    """Base class. Subclasses implement `_table()` (or override `_lookup`)."""

    def __init__(self, n_items: int, n_views: int, view_dim: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.n_views = n_views
        self.view_dim = view_dim
        self.mask_emb: nn.Parameter | None = None

    @property
    def mask_id(self) -> int:
        return self.n_items + 1

    def enable_mask_token(self) -> None:
        if self.mask_emb is None:
            self.mask_emb = nn.Parameter(torch.randn(self.n_views, self.view_dim) * 0.02)

    def _table(self) -> Tensor:
        """[n_items + 1, n_views, view_dim], row 0 = zeros."""
        raise NotImplementedError

    def _lookup(self, ids: Tensor) -> Tensor:
        return self._table()[ids]

    def forward(self, ids: Tensor) -> Tensor:
        """ids [...] -> [..., n_views, view_dim]; the [MASK] id maps to the mask vector."""
        if self.mask_emb is None:
            return self._lookup(ids)
        is_mask = ids == self.mask_id
        out = self._lookup(ids.masked_fill(is_mask, 0))
        return torch.where(is_mask[..., None, None], self.mask_emb.to(out.dtype), out)

    def all_items(self) -> Tensor:
        """[n_items + 1, n_views, view_dim] for every item (row 0 = padding = zeros)."""
        return self._table()

    def aux_loss(self) -> Tensor | None:
        """Extra loss the encoder wants added (e.g. contrastive alignment); None if none."""
        return None

    def new_step(self) -> None:
        """Called at the start of each training step (encoders that cache item tables reset)."""

    def sequence_mix(self, emb: Tensor, pad: Tensor, causal: bool) -> Tensor:
        """Optional fusion of the views along the sequence, emb [B, L, V, d] (default: none)."""
        return emb


class IdEncoder(ItemEncoder):
    """One trainable ID view: `nn.Embedding(n_items + 1, dim, padding_idx=0)`."""

    def __init__(self, n_items: int, dim: int, init_std: float = 0.02) -> None:
        super().__init__(n_items, 1, dim)
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=init_std)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def _lookup(self, ids: Tensor) -> Tensor:
        return self.embedding(ids).unsqueeze(-2)

    def _table(self) -> Tensor:
        return self.embedding.weight.unsqueeze(1)


def pretrained_table(
    features: np.ndarray | Tensor, n_items: int, trainable: bool, name: str = "features"
) -> nn.Embedding:
    """An embedding table initialised from id-aligned features (Transformers4Rec style).

    `features` is [n_items + 1, f] (row 0 = padding) or [n_items, f] (a zero row is
    prepended). Frozen tables are registered without gradients, so they cost nothing in
    the optimiser and are saved (and checked) with the model.
    """
    arr = torch.as_tensor(np.array(features, dtype=np.float32))  # a copy: mmaps are read-only
    if arr.ndim != 2:
        raise ArtifactMismatchError(f"{name}: expected a 2-D feature table, got {tuple(arr.shape)}")
    if arr.shape[0] == n_items:
        arr = torch.cat([arr.new_zeros(1, arr.shape[1]), arr])
    if arr.shape[0] != n_items + 1:
        raise ArtifactMismatchError(
            f"{name}: {arr.shape[0]} rows, expected {n_items + 1} (items + padding row)"
        )
    arr[0] = 0.0
    return nn.Embedding.from_pretrained(arr, freeze=not trainable, padding_idx=0)


class PretrainedTableEncoder(ItemEncoder):
    """A feature table (.npy feature store or array) + a trainable adapter, one view.

    adapter "linear" (default) or "mlp" (Linear-GELU-Linear), or "none" when the table
    width already equals `dim`. The padding row stays zero after the adapter.
    """

    def __init__(
        self,
        features: np.ndarray | Tensor | str | Path,
        n_items: int,
        dim: int,
        trainable: bool = False,
        adapter: str = "linear",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_items, 1, dim)
        if isinstance(features, str | Path):
            features = np.load(features, allow_pickle=False, mmap_mode="r")
        self.table = pretrained_table(features, n_items, trainable, name=str(type(features)))
        width = self.table.embedding_dim
        if adapter == "none":
            if width != dim:
                raise ArtifactMismatchError(f"adapter 'none' needs width {dim}, table has {width}")
            self.adapter: nn.Module = nn.Identity()
        elif adapter == "linear":
            self.adapter = nn.Linear(width, dim)
        elif adapter == "mlp":
            self.adapter = nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim))
        else:
            raise ValueError(f"unknown adapter '{adapter}'")
        self.dropout = FastDropout(dropout)

    def _adapt(self, x: Tensor, ids: Tensor) -> Tensor:
        out = self.adapter(self.dropout(x))
        return out.masked_fill((ids == 0)[..., None], 0.0).unsqueeze(-2)

    def _lookup(self, ids: Tensor) -> Tensor:
        return self._adapt(self.table(ids), ids)

    def _table(self) -> Tensor:
        ids = torch.arange(self.n_items + 1, device=self.table.weight.device)
        return self._adapt(self.table.weight, ids)


class MultiViewEncoder(ItemEncoder):
    """Stack several single- or multi-view encoders of equal `view_dim` into one."""

    def __init__(self, encoders: list[ItemEncoder]) -> None:
        dims = {e.view_dim for e in encoders}
        items = {e.n_items for e in encoders}
        if len(dims) != 1 or len(items) != 1:
            raise ValueError("all views need the same view_dim and n_items")
        super().__init__(items.pop(), sum(e.n_views for e in encoders), dims.pop())
        self.encoders = nn.ModuleList(encoders)

    def _lookup(self, ids: Tensor) -> Tensor:
        return torch.cat([e(ids) for e in self.encoders], dim=-2)

    def _table(self) -> Tensor:
        return torch.cat([e.all_items() for e in self.encoders], dim=-2)

    def aux_loss(self) -> Tensor | None:
        losses = [x for e in self.encoders if (x := e.aux_loss()) is not None]
        return torch.stack(losses).sum() if losses else None

    def new_step(self) -> None:
        for e in self.encoders:
            e.new_step()

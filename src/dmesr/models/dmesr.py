"""The DMESR item encoder (SPEC §1.2): adapters, contrastive alignment, dual-view fusion.

Inputs are frozen, id-aligned feature tables (row 0 = padding) with coverage masks:
MLLM description views (`img`, `txt`, `mm`, optionally `img_enc`) and the original text
fields (`title`, `genres`, …). The encoder outputs up to three item views of width d for
the shared backbone: `text` (F^text), `mllm` (F^mllm) and an optional collaborative `id`
view initialised from a PCA of the semantic features.

Item-level fusion depends only on the item, so it is computed for a set of items at once
(the whole catalogue when it is small, else the unique ids of a call) and cached until
the parameters change: once per training step (`new_step`) and once per evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from dmesr.errors import DmesrError
from dmesr.models.item_encoders import ItemEncoder

if TYPE_CHECKING:
    from dmesr.data.dataset import PreparedDataset

OutView = Literal["text", "mllm", "id"]


class DMESRConfig(BaseModel):
    """Every switch of the method; ablations and baselines are settings of these."""

    model_config = ConfigDict(extra="forbid")

    mllm_views: list[str] = Field(default_factory=lambda: ["img", "txt", "mm"])
    text_fields: list[str] | None = Field(None, description="None: every stored text field")
    out_views: list[OutView] = Field(default_factory=lambda: ["text", "mllm", "id"])
    view_dim: int | None = Field(
        None, ge=2, description="width of each output view (the shared backbone's width); "
        "None: model.hidden. hidden / n_views keeps the user vector as wide as ID-only's",
    )
    adapter: Literal["linear", "mlp"] = "mlp"
    adapter_dropout: float = 0.1
    fusion: Literal["cross_attention", "mean", "sequence", "concat"] = Field(
        "cross_attention",
        description="cross_attention: item-level bidirectional fusion (DMESR); mean: no "
        "fusion; sequence: causal cross-attention along the user sequence between the "
        "`sequence_pair` views; concat: MLLM views concatenated into one adapter "
        "(MLLM-concat baseline)",
    )
    sequence_pair: tuple[OutView, OutView] = ("text", "mllm")
    heads: int = 2
    align_weight: float = Field(0.1, ge=0.0, description="λ in L = L_rec + λ·L_align")
    temperature: float = Field(0.1, gt=0.0)
    learn_temperature: bool = False
    align_max_items: int = Field(1024, ge=2, description="items per step in L_align")
    id_init: Literal["pca", "random"] = "pca"
    fusion_scope: Literal["auto", "all", "batch"] = "auto"
    all_items_threshold: int = 50_000


class Adapter(nn.Module):
    """Frozen feature -> model width: Linear or a small MLP, with dropout and LayerNorm."""

    def __init__(self, in_dim: int, dim: int, kind: str, dropout: float) -> None:
        super().__init__()
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.net(self.dropout(x)))


def info_nce(a: Tensor, b: Tensor, temperature: Tensor | float) -> Tensor:
    """Symmetric InfoNCE between paired rows of a and b (cosine similarity, in-batch negatives)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def alignment_loss(views: Tensor, mask: Tensor, temperature: Tensor | float) -> Tensor:
    """Mean symmetric InfoNCE over view pairs; rows where either view is missing are skipped.

    views [N, V, d], mask [N, V] (True = present).
    """
    losses = []
    n_views = views.shape[1]
    for i in range(n_views):
        for j in range(i + 1, n_views):
            both = mask[:, i] & mask[:, j]
            if int(both.sum()) >= 2:
                losses.append(info_nce(views[both, i], views[both, j], temperature))
    if not losses:
        return views.sum() * 0.0
    return torch.stack(losses).mean()


class CrossFusion(nn.Module):
    """out = pool(LN(Q + MHA(Q, K=V=KV))) with masks; a learned null key avoids empty sets."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, q: Tensor, q_mask: Tensor, kv: Tensor, kv_mask: Tensor) -> Tensor:
        n = kv.shape[0]
        kv = torch.cat([self.null.expand(n, 1, -1), kv], dim=1)
        kv_pad = torch.cat([kv_mask.new_zeros(n, 1), ~kv_mask], dim=1)
        attended, _ = self.attn(q, kv, kv, key_padding_mask=kv_pad, need_weights=False)
        fused = self.norm(q + attended)
        return masked_mean(fused, q_mask)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of the present rows; all-missing rows give zeros."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def pca_init(features: Tensor, dim: int) -> Tensor:
    """First `dim` principal components of item features (row 0 excluded), scaled small."""
    x = features[1:] - features[1:].mean(0, keepdim=True)
    q = min(dim, min(x.shape) - 1)
    u, s, _ = torch.pca_lowrank(x, q=q, center=False)
    proj = u * s
    proj = proj / proj.std().clamp(min=1e-8) * 0.02
    out = torch.zeros(features.shape[0], dim)
    out[1:, :q] = proj
    return out


class DMESREncoder(ItemEncoder):
    """Adapters + alignment + bidirectional cross-attention fusion -> [text, mllm, id] views."""

    def __init__(self, n_items: int, dim: int, mllm: dict[str, tuple[Tensor, Tensor]],
                 text: dict[str, tuple[Tensor, Tensor]], cfg: DMESRConfig) -> None:
        super().__init__(n_items, len(cfg.out_views), dim)
        if not cfg.out_views:
            raise ValueError("out_views must name at least one view")
        if "mllm" in cfg.out_views and not mllm:
            raise ValueError("out view 'mllm' needs at least one MLLM feature view")
        if "text" in cfg.out_views and not text:
            raise ValueError("out view 'text' needs at least one text field")
        self.cfg = cfg
        self.mllm_names, self.text_names = list(mllm), list(text)
        self._register_tables("m", mllm)
        self._register_tables("t", text)
        self.m_adapters = nn.ModuleList(Adapter(mllm[k][0].shape[1], dim, cfg.adapter,
                                                cfg.adapter_dropout) for k in mllm)
        self.t_adapters = nn.ModuleList(Adapter(text[k][0].shape[1], dim, cfg.adapter,
                                                cfg.adapter_dropout) for k in text)
        self.fuse_m = CrossFusion(dim, cfg.heads, cfg.adapter_dropout)
        self.fuse_t = CrossFusion(dim, cfg.heads, cfg.adapter_dropout)
        self.concat_adapter: Adapter | None = None
        if cfg.fusion == "concat" and mllm:
            width = sum(t.shape[1] for t, _ in mllm.values())
            self.concat_adapter = Adapter(width, dim, cfg.adapter, cfg.adapter_dropout)
        self.seq_fusion: SequenceFusion | None = None
        if cfg.fusion == "sequence":
            missing = [v for v in cfg.sequence_pair if v not in cfg.out_views]
            if missing:
                raise ValueError(f"sequence_pair views {missing} are not in out_views")
            self.seq_fusion = SequenceFusion(dim, cfg.heads, cfg.adapter_dropout)
        log_t = torch.tensor(math.log(cfg.temperature))
        self.log_temperature = nn.Parameter(log_t, requires_grad=cfg.learn_temperature)
        self.id_embedding: nn.Embedding | None = None
        if "id" in cfg.out_views:
            self.id_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
            if cfg.id_init == "pca":
                sem = torch.cat([t for t, _ in (*mllm.values(), *text.values())], dim=1)
                self.id_embedding.weight.data.copy_(pca_init(sem, dim))
            else:
                nn.init.normal_(self.id_embedding.weight, std=0.02)
                self.id_embedding.weight.data[0].zero_()
        self._cache: Tensor | None = None  # fused table of every item, see new_step
        self._align_ids: Tensor | None = None

    # ---- frozen inputs ---------------------------------------------------------------
    def _register_tables(self, prefix: str, tables: dict[str, tuple[Tensor, Tensor]]) -> None:
        for k, (table, mask) in enumerate(tables.values()):
            if table.shape[0] != self.n_items + 1 or mask.shape[0] != self.n_items + 1:
                raise ValueError(f"feature table {k} has {table.shape[0]} rows, expected "
                                 f"{self.n_items + 1}")
            mask = mask.clone().bool()
            mask[0] = False
            self.register_buffer(f"{prefix}{k}", table.float(), persistent=False)
            self.register_buffer(f"{prefix}{k}_mask", mask, persistent=False)

    def _stack(self, prefix: str, adapters: nn.ModuleList, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Adapted views [N, V, d] and presence mask [N, V] for item ids [N]."""
        vecs, masks = [], []
        for k, adapter in enumerate(adapters):
            vecs.append(adapter(getattr(self, f"{prefix}{k}")[ids]))
            masks.append(getattr(self, f"{prefix}{k}_mask")[ids])
        return torch.stack(vecs, 1), torch.stack(masks, 1)

    # ---- item-level fusion ---------------------------------------------------------------
    def fused(self, ids: Tensor) -> Tensor:
        """Item views [N, n_views, d] for item ids [N] (padding rows are zeros)."""
        out = []
        # concat feeds the raw MLLM tables to its own adapter; the per-view ones stay unused
        need_m = self.mllm_names and self.concat_adapter is None
        m, m_mask = self._stack("m", self.m_adapters, ids) if need_m else (None, None)
        t, t_mask = self._stack("t", self.t_adapters, ids) if self.text_names else (None, None)
        cross = self.cfg.fusion == "cross_attention" and m is not None and t is not None
        for view in self.cfg.out_views:
            if view == "mllm" and self.concat_adapter is not None:
                raw = [getattr(self, f"m{k}")[ids] for k in range(len(self.mllm_names))]
                out.append(self.concat_adapter(torch.cat(raw, dim=-1)))
            elif view == "mllm":
                out.append(self.fuse_m(m, m_mask, t, t_mask) if cross else masked_mean(m, m_mask))
            elif view == "text":
                out.append(self.fuse_t(t, t_mask, m, m_mask) if cross else masked_mean(t, t_mask))
            else:
                out.append(self.id_embedding(ids))
        views = torch.stack(out, 1)
        return views.masked_fill((ids == 0)[:, None, None], 0.0)

    def _all_scope(self) -> bool:
        scope = self.cfg.fusion_scope
        return scope == "all" or (scope == "auto" and self.n_items <= self.cfg.all_items_threshold)

    def new_step(self) -> None:
        """Called at the start of every training step: parameters changed, drop the cache."""
        self._cache = None
        self._align_ids = None

    def train(self, mode: bool = True) -> DMESREncoder:
        self._cache = None
        return super().train(mode)

    def _table(self) -> Tensor:
        if self._cache is None:
            ids = torch.arange(self.n_items + 1, device=self.log_temperature.device)
            self._cache = self.fused(ids)
        return self._cache

    def _lookup(self, ids: Tensor) -> Tensor:
        if self.training and self._align_ids is None:
            self._align_ids = ids.reshape(-1)
        if self._all_scope() or not self.training:
            return self._table()[ids]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        return self.fused(uniq)[inverse]

    def sequence_mix(self, emb: Tensor, pad: Tensor, causal: bool) -> Tensor:
        """`fusion: sequence`: fuse two views along the user sequence, emb [B, L, V, d]."""
        if self.seq_fusion is None:
            return emb
        ia, ib = (self.cfg.out_views.index(v) for v in self.cfg.sequence_pair)
        a, b = self.seq_fusion(emb[:, :, ia], emb[:, :, ib], pad, causal)
        views = list(emb.unbind(2))
        views[ia], views[ib] = a, b
        return torch.stack(views, 2)

    # ---- alignment -------------------------------------------------------------------------
    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def aux_loss(self) -> Tensor | None:
        if self.cfg.align_weight == 0 or len(self.mllm_names) < 2 or self._align_ids is None:
            return None
        ids = torch.unique(self._align_ids)
        ids = ids[ids > 0]
        if ids.numel() > self.cfg.align_max_items:
            ids = ids[torch.randperm(ids.numel(), device=ids.device)[: self.cfg.align_max_items]]
        m, m_mask = self._stack("m", self.m_adapters, ids)
        return self.cfg.align_weight * alignment_loss(m, m_mask, self.temperature)


class SequenceFusion(nn.Module):
    """Fusion along the user sequence (`fusion: sequence`, LLM-ESR style).

    Two view sequences A, B [N, L, d] attend to each other: A' = LN(A + Attn(A, B, B)) and
    B' = LN(B + Attn(B, A, A)). With `causal`, position t sees only positions <= t of the
    other view, so no future item leaks into an earlier prediction.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.a_to_b = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.b_to_a = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_a = nn.LayerNorm(dim)
        self.norm_b = nn.LayerNorm(dim)

    @staticmethod
    def attn_mask(pad: Tensor, causal: bool) -> Tensor:
        """Bool mask [N, L, L], True = blocked; the diagonal stays open so no row is empty."""
        n, length = pad.shape
        blocked = pad[:, None, :].expand(n, length, length).clone()
        if causal:
            future = torch.triu(torch.ones(length, length, dtype=torch.bool, device=pad.device), 1)
            blocked |= future
        blocked &= ~torch.eye(length, dtype=torch.bool, device=pad.device)
        return blocked

    def forward(self, a: Tensor, b: Tensor, pad: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
        mask = self.attn_mask(pad, causal).repeat_interleave(self.a_to_b.num_heads, dim=0)
        a2, _ = self.a_to_b(a, b, b, attn_mask=mask, need_weights=False)
        b2, _ = self.b_to_a(b, a, a, attn_mask=mask, need_weights=False)
        keep = (~pad)[..., None].to(a.dtype)
        return self.norm_a(a + a2) * keep, self.norm_b(b + b2) * keep


def build_dmesr_encoder(cfg: DMESRConfig, dim: int, dataset: PreparedDataset,
                        store_dir: str | Path | None = None) -> DMESREncoder:
    """A DMESR encoder over the dataset's feature store (`dmesr embed` output).

    MLLM views come from `mllm_<view>` (or `img_enc`), text fields from `text_<field>`.
    A requested view the store lacks (e.g. `img` on a text-only dataset) is left out;
    every view is checked against the dataset's content hash and item order.
    """
    from dmesr.features.store import FeatureStore

    store = FeatureStore(store_dir or dataset.root / "features", dataset)
    available = set(store.views)

    def load(names: list[str]) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for name in names:
            if name in available:
                view = store.load(name)
                out[name] = (torch.from_numpy(np.asarray(view.features, dtype=np.float32)),
                             torch.from_numpy(view.mask))
        return out

    mllm = load([v if v == "img_enc" else f"mllm_{v}" for v in cfg.mllm_views])
    fields = cfg.text_fields if cfg.text_fields is not None else dataset.text_fields
    text = load([f"text_{f}" for f in fields])
    need = {"mllm": mllm, "text": text}
    for view in cfg.out_views:
        if view in need and not need[view]:
            raise DmesrError(
                f"out view '{view}' needs feature views that {store.root} does not have "
                f"(has: {', '.join(sorted(available)) or 'none'}); run `dmesr embed`"
            )
    return DMESREncoder(dataset.n_items, dim, mllm, text, cfg)

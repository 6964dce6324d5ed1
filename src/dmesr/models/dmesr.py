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
from dmesr.models.dropout import FastDropout, attention, fast_dropout
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
        "None: model.hidden // 2 (chosen on validation: as good as model.hidden on "
        "ML-100K and ~half the step cost)",
    )
    adapter: Literal["linear", "mlp"] = "mlp"
    adapter_dropout: float = 0.1
    input_dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="dropout on the frozen features entering each "
        "adapter; None: adapter_dropout. With item fusion over the whole catalogue it is "
        "drawn for every item and feature dimension at every step (a third of the fusion "
        "time for H&M's 16,587 items x 9 tables of 384-d)")
    fusion: Literal["cross_attention", "mean", "concat"] = Field(
        "cross_attention",
        description="item-level fusion. cross_attention: bidirectional MLLM/text fusion "
        "(DMESR); mean: no fusion; concat: MLLM views concatenated into one adapter "
        "(MLLM-concat baseline)",
    )
    sequence_fusion: list[OutView] | Literal["all"] = Field(
        "all",
        description="out views fused along the user sequence (LLM-ESR style): each attends "
        "causally to the others' sequences; 'all': every out view (when there are two or "
        "more); [] = none. Chosen on validation: item + sequence fusion beat item-only "
        "with SASRec; BERT4Rec's backbone file turns it off (with it the cloze objective "
        "stalls near the uniform loss: valid NDCG@10 0.059 vs 0.108 item-only)",
    )
    sequence_keys: Literal["concat", "mean"] = Field(
        "concat",
        description="what a view attends to in sequence fusion: the other views' sequences "
        "concatenated ((V-1)·L keys), or their mean (L keys: about half the cost for three "
        "views; the same for two)",
    )
    heads: int = 2
    align_weight: float = Field(0.1, ge=0.0, description="λ in L = L_rec + λ·L_align")
    temperature: float = Field(0.1, gt=0.0)
    learn_temperature: bool = False
    align_max_items: int = Field(256, ge=2, description="items per step in L_align (in-batch "
                                 "negatives); a random subset of the step's items")
    id_init: Literal["pca", "pca_text", "random"] = Field(
        "pca", description="ID view init: PCA of every semantic feature, of the original "
        "text fields only, or random")
    fusion_gate: bool = Field(
        False, description="scale each cross-attention update by tanh(g), g learned from 0: "
        "fusion starts as the identity and opens only as far as it helps")
    feature_norm: Literal["none", "standardize"] = Field(
        "none", description="standardize: z-score every frozen feature dimension over the "
        "catalogue before the adapters. Sentence embeddings are anisotropic (all items "
        "share most of their vector), so adapters first map every item to nearly the same "
        "view, and BERT4Rec's cloze objective stalls near the uniform loss. Measured: it "
        "lifts BERT4Rec-DMESR's valid NDCG@10 from 0.059 to 0.070, still far below ID-only, "
        "so it is off by default (see docs/training.md)")
    fusion_scope: Literal["auto", "all", "batch"] = "auto"
    all_items_threshold: int = 50_000

    def sequence_views(self) -> list[OutView]:
        """The out views fused along the sequence (`sequence_fusion` resolved)."""
        if self.sequence_fusion == "all":
            return list(self.out_views) if len(self.out_views) >= 2 else []
        return list(self.sequence_fusion)


class Adapter(nn.Module):
    """Frozen feature -> model width: Linear or a small MLP, with dropout and LayerNorm."""

    def __init__(self, in_dim: int, dim: int, kind: str, dropout: float,
                 input_dropout: float | None = None) -> None:
        super().__init__()
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), FastDropout(dropout),
                                     nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.dropout = FastDropout(dropout if input_dropout is None else input_dropout)

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


class CrossAttention(nn.Module):
    """Multi-head attention of queries [N, Lq, d] over keys/values [N, Lk, d].

    `allowed` [N, 1, Lq, Lk] is True where a query may attend; dropout acts on the output.
    `fused`: SDPA's kernel (faster along user sequences: 1.5x on a step's sequence fusion)
    or plain matmuls (faster for the many 3-by-6 problems of item-level fusion).
    """

    def __init__(self, dim: int, heads: int, dropout: float, fused: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.fused = fused
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q: Tensor, kv: Tensor, allowed: Tensor) -> Tensor:
        n, lq, d = q.shape
        lk, h = kv.shape[1], self.heads
        qh = self.q(q).view(n, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(kv).view(n, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = attention(qh, k, v, allowed, 0.0, self.training, fused=self.fused)
        return fast_dropout(self.out(y.transpose(1, 2).reshape(n, lq, d)), self.dropout,
                            self.training)


class CrossFusion(nn.Module):
    """out = pool(LN(Q + MHA(Q, K=V=KV))) with masks; a learned null key avoids empty sets."""

    def __init__(self, dim: int, heads: int, dropout: float, gate: bool = False) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, heads, dropout)
        self.norm = nn.LayerNorm(dim)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.gate = nn.Parameter(torch.zeros(())) if gate else None

    def forward(self, q: Tensor, q_mask: Tensor, kv: Tensor, kv_mask: Tensor) -> Tensor:
        n = kv.shape[0]
        kv = torch.cat([self.null.expand(n, 1, -1), kv], dim=1)
        allowed = torch.cat([kv_mask.new_ones(n, 1), kv_mask], dim=1)[:, None, None, :]
        update = self.attn(q, kv, allowed)
        if self.gate is not None:
            update = torch.tanh(self.gate) * update
        fused = self.norm(q + update)
        return masked_mean(fused, q_mask)


def standardize(table: Tensor, present: Tensor) -> Tensor:
    """Z-score each column over the present rows; absent rows (and padding) stay zero."""
    rows = table[present]
    if rows.shape[0] < 2:
        return table * present[:, None]
    z = (table - rows.mean(0)) / rows.std(0).clamp(min=1e-6)
    return z * present[:, None]


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
        drops = (cfg.adapter_dropout, cfg.input_dropout)
        self.m_adapters = nn.ModuleList(Adapter(mllm[k][0].shape[1], dim, cfg.adapter, *drops)
                                        for k in mllm)
        self.t_adapters = nn.ModuleList(Adapter(text[k][0].shape[1], dim, cfg.adapter, *drops)
                                        for k in text)
        self.fuse_m = CrossFusion(dim, cfg.heads, cfg.adapter_dropout, cfg.fusion_gate)
        self.fuse_t = CrossFusion(dim, cfg.heads, cfg.adapter_dropout, cfg.fusion_gate)
        self.concat_adapter: Adapter | None = None
        if cfg.fusion == "concat" and mllm:
            width = sum(t.shape[1] for t, _ in mllm.values())
            self.concat_adapter = Adapter(width, dim, cfg.adapter, *drops)
        self.seq_fusion: SequenceFusion | None = None
        seq_views = cfg.sequence_views()
        if seq_views:
            missing = [v for v in seq_views if v not in cfg.out_views]
            if missing or len(set(seq_views)) < 2:
                raise ValueError(f"sequence_fusion needs two or more distinct out views, got "
                                 f"{seq_views} (out_views {cfg.out_views})")
            self.seq_fusion = SequenceFusion(dim, len(seq_views), cfg.heads, cfg.adapter_dropout,
                                             cfg.sequence_keys)
        log_t = torch.tensor(math.log(cfg.temperature))
        self.log_temperature = nn.Parameter(log_t, requires_grad=cfg.learn_temperature)
        self.id_embedding: nn.Embedding | None = None
        if "id" in cfg.out_views:
            self.id_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
            if cfg.id_init in ("pca", "pca_text"):
                source = text if cfg.id_init == "pca_text" and text else {**mllm, **text}
                sem = torch.cat([t for t, _ in source.values()], dim=1)
                self.id_embedding.weight.data.copy_(pca_init(sem, dim))
            else:
                nn.init.normal_(self.id_embedding.weight, std=0.02)
                self.id_embedding.weight.data[0].zero_()
        self._cache: Tensor | None = None  # fused table of every item, see new_step
        self._align_ids: Tensor | None = None
        self._adapted_m: tuple[Tensor, Tensor, Tensor] | None = None  # ids, views, mask

    # ---- frozen inputs ---------------------------------------------------------------
    def _register_tables(self, prefix: str, tables: dict[str, tuple[Tensor, Tensor]]) -> None:
        for k, (table, mask) in enumerate(tables.values()):
            if table.shape[0] != self.n_items + 1 or mask.shape[0] != self.n_items + 1:
                raise ValueError(f"feature table {k} has {table.shape[0]} rows, expected "
                                 f"{self.n_items + 1}")
            mask = mask.clone().bool()
            mask[0] = False
            table = table.float()
            if self.cfg.feature_norm == "standardize":
                table = standardize(table, mask)
            self.register_buffer(f"{prefix}{k}", table, persistent=False)
            self.register_buffer(f"{prefix}{k}_mask", mask, persistent=False)

    def _rows(self, name: str, ids: Tensor, whole: bool) -> Tensor:
        """Rows `ids` of a frozen table; `whole` (ids = 0..n_items) skips the gather, a
        full copy of every table at every step (~10% of an H&M step)."""
        table = getattr(self, name)
        return table if whole else table[ids]

    def _stack(self, prefix: str, adapters: nn.ModuleList, ids: Tensor,
               whole: bool = False) -> tuple[Tensor, Tensor]:
        """Adapted views [N, V, d] and presence mask [N, V] for item ids [N]."""
        vecs, masks = [], []
        for k, adapter in enumerate(adapters):
            vecs.append(adapter(self._rows(f"{prefix}{k}", ids, whole)))
            masks.append(self._rows(f"{prefix}{k}_mask", ids, whole))
        return torch.stack(vecs, 1), torch.stack(masks, 1)

    # ---- item-level fusion ---------------------------------------------------------------
    def fused(self, ids: Tensor, whole: bool = False) -> Tensor:
        """Item views [N, n_views, d] for item ids [N] (padding rows are zeros); `whole`
        says that ids is 0..n_items, every row in order."""
        out = []
        # concat feeds the raw MLLM tables to its own adapter; the per-view ones stay unused
        need_m = self.mllm_names and self.concat_adapter is None
        m, m_mask = self._stack("m", self.m_adapters, ids, whole) if need_m else (None, None)
        if m is not None and self.training:  # L_align reuses these (same dropout draw)
            self._adapted_m = (ids, m, m_mask)
        t, t_mask = (self._stack("t", self.t_adapters, ids, whole) if self.text_names
                     else (None, None))
        cross = self.cfg.fusion == "cross_attention" and m is not None and t is not None
        for view in self.cfg.out_views:
            if view == "mllm" and self.concat_adapter is not None:
                raw = [self._rows(f"m{k}", ids, whole) for k in range(len(self.mllm_names))]
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
        self._adapted_m = None

    def train(self, mode: bool = True) -> DMESREncoder:
        self._cache = None
        return super().train(mode)

    def _table(self) -> Tensor:
        if self._cache is None:
            ids = torch.arange(self.n_items + 1, device=self.log_temperature.device)
            self._cache = self.fused(ids, whole=True)
        return self._cache

    def _lookup(self, ids: Tensor) -> Tensor:
        if self.training and self._align_ids is None:
            self._align_ids = ids.reshape(-1)
        if self._all_scope() or not self.training:
            return self._table()[ids]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        return self.fused(uniq)[inverse]

    def sequence_mix(self, emb: Tensor, pad: Tensor, causal: bool) -> Tensor:
        """`sequence_fusion`: fuse views along the user sequence, emb [B, L, V, d]."""
        if self.seq_fusion is None:
            return emb
        idx = [self.cfg.out_views.index(v) for v in self.cfg.sequence_views()]
        fused = self.seq_fusion(emb[:, :, idx], pad, causal)
        out = emb.clone()
        out[:, :, idx] = fused
        return out

    # ---- alignment -------------------------------------------------------------------------
    def _adapted(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Adapted MLLM views of `ids`, taken from this step's fusion when it computed them."""
        if self._adapted_m is not None:
            done, m, m_mask = self._adapted_m  # `done` is sorted (arange or torch.unique)
            rows = torch.searchsorted(done, ids).clamp(max=done.numel() - 1)
            if bool((done[rows] == ids).all()):
                return m[rows], m_mask[rows]
        return self._stack("m", self.m_adapters, ids)

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
        m, m_mask = self._adapted(ids)
        return self.cfg.align_weight * alignment_loss(m, m_mask, self.temperature)


class SequenceFusion(nn.Module):
    """Fusion along the user sequence (LLM-ESR style) of V >= 2 views [N, L, V, d].

    View v's sequence attends to the other views' sequences: X_v' = LN_v(X_v + Attn_v(X_v,
    X_others)). With `causal`, position t sees only positions <= t of the other views, so
    no future item leaks into an earlier prediction; position t of every other view is
    always visible, so no row is empty. With V = 2 this is LLM-ESR's bidirectional pair.
    With keys="mean", X_others is the mean of the other views (one key per position).
    """

    def __init__(self, dim: int, n_views: int, heads: int, dropout: float,
                 keys: Literal["concat", "mean"] = "concat") -> None:
        super().__init__()
        self.keys = keys
        self.attn = nn.ModuleList(CrossAttention(dim, heads, dropout, fused=True)
                                  for _ in range(n_views))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_views))

    @staticmethod
    def allowed(pad: Tensor, causal: bool) -> Tensor:
        """Bool [N, 1, L, L], True = may attend; the diagonal stays open."""
        length = pad.shape[1]
        ok = (~pad)[:, None, None, :].expand(-1, 1, length, length)
        if causal:
            ok = ok & torch.ones(length, length, dtype=torch.bool, device=pad.device).tril()
        return ok | torch.eye(length, dtype=torch.bool, device=pad.device)

    def forward(self, x: Tensor, pad: Tensor, causal: bool) -> Tensor:
        n_views = x.shape[2]
        allowed = self.allowed(pad, causal)
        if self.keys == "concat":  # view v attends to the others' sequences, one after another
            allowed = allowed.repeat(1, 1, 1, n_views - 1)
            keys = [torch.cat([x[:, :, u] for u in range(n_views) if u != v], dim=1)
                    for v in range(n_views)]
        else:  # to their mean: one key per position
            total = x.sum(2)
            keys = [(total - x[:, :, v]) / (n_views - 1) for v in range(n_views)]
        keep = (~pad)[..., None].to(x.dtype)
        out = [norm(x[:, :, v] + attn(x[:, :, v], keys[v], allowed)) * keep
               for v, (attn, norm) in enumerate(zip(self.attn, self.norms, strict=True))]
        return torch.stack(out, dim=2)


def feature_view_names(cfg: DMESRConfig, dataset: PreparedDataset) -> tuple[list[str], list[str]]:
    """Store views a DMESR encoder asks for: (MLLM views, original text fields)."""
    fields = cfg.text_fields if cfg.text_fields is not None else dataset.text_fields
    return ([v if v == "img_enc" else f"mllm_{v}" for v in cfg.mllm_views],
            [f"text_{f}" for f in fields])


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
    mllm_names, text_names = feature_view_names(cfg, dataset)

    def load(names: list[str]) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for name in names:
            if name in available:
                view = store.load(name)
                out[name] = (torch.from_numpy(np.asarray(view.features, dtype=np.float32)),
                             torch.from_numpy(view.mask))
        return out

    mllm, text = load(mllm_names), load(text_names)
    need = {"mllm": mllm, "text": text}
    for view in cfg.out_views:
        if view in need and not need[view]:
            raise DmesrError(
                f"out view '{view}' needs feature views that {store.root} does not have "
                f"(has: {', '.join(sorted(available)) or 'none'}); run `dmesr embed`"
            )
    return DMESREncoder(dataset.n_items, dim, mllm, text, cfg)

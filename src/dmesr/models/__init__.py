"""Sequential recommenders (SASRec, BERT4Rec, GRU4Rec), item encoders and baselines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from dmesr.models.backbones import BERT4Rec, GRU4Rec, SASRec
from dmesr.models.baselines import Pop
from dmesr.models.item_encoders import IdEncoder, ItemEncoder
from dmesr.models.sequential import SequentialRecommender

if TYPE_CHECKING:
    from dmesr.data.dataset import PreparedDataset
    from dmesr.train.config import ModelConfig

__all__ = ["BERT4Rec", "GRU4Rec", "IdEncoder", "Pop", "SASRec", "SequentialRecommender",
           "build_encoder", "build_model", "feature_record"]


def build_encoder(cfg: ModelConfig, n_items: int,
                  dataset: PreparedDataset | None = None) -> ItemEncoder:
    if cfg.encoder.type == "id":
        return IdEncoder(n_items, cfg.hidden)
    if cfg.encoder.type == "dmesr":
        if dataset is None:
            raise ValueError("the dmesr encoder needs the prepared dataset (feature store)")
        from dmesr.models.dmesr import build_dmesr_encoder

        return build_dmesr_encoder(cfg.encoder.dmesr, cfg.view_width, dataset,
                                   _store_dir(cfg, dataset))
    raise ValueError(f"unknown encoder type '{cfg.encoder.type}'")


def _store_dir(cfg: ModelConfig, dataset: PreparedDataset) -> Path:
    from dmesr.config import resolve_path

    return resolve_path(cfg.encoder.features) if cfg.encoder.features else dataset.root / "features"


def feature_record(cfg: ModelConfig, dataset: PreparedDataset) -> dict[str, Any] | None:
    """What the configured item encoder reads from the feature store (`FeatureStore.record`);
    None for an encoder that reads no features."""
    if cfg.encoder.type != "dmesr":
        return None
    from dmesr.features.store import FeatureStore
    from dmesr.models.dmesr import feature_view_names

    names = feature_view_names(cfg.encoder.dmesr, dataset)
    return FeatureStore(_store_dir(cfg, dataset), dataset).record(names[0] + names[1])


def build_model(
    cfg: ModelConfig, n_items: int, popularity: np.ndarray | None = None,
    encoder: ItemEncoder | None = None, dataset: PreparedDataset | None = None,
) -> nn.Module:
    """The model named by `cfg.backbone`; `encoder` overrides the configured item encoder."""
    if cfg.backbone == "pop":
        if popularity is None:
            raise ValueError("the pop baseline needs training popularity")
        return Pop(n_items).fit(popularity)
    enc = encoder if encoder is not None else build_encoder(cfg, n_items, dataset)
    common = {"loss": cfg.loss, "n_neg": cfg.n_neg}
    model = _backbone(cfg, enc, common)
    model.ce_block_mb = cfg.ce_block_mb
    return model


def _backbone(cfg: ModelConfig, enc: ItemEncoder, common: dict) -> SequentialRecommender:
    if cfg.backbone == "gru4rec":
        return GRU4Rec(enc, cfg.scaled(cfg.gru_hidden), cfg.layers, cfg.dropout, **common)
    tf = {
        "max_len": cfg.max_len, "layers": cfg.layers, "heads": cfg.heads,
        "inner": cfg.scaled(cfg.inner),
        "dropout": cfg.dropout, "attn_dropout": cfg.attn_dropout,
        "emb_dropout": cfg.emb_dropout, "act": cfg.act, **common,
    }
    if cfg.backbone == "sasrec":
        return SASRec(enc, norm=cfg.norm or "pre", **tf)
    return BERT4Rec(enc, norm=cfg.norm or "post", mask_prob=cfg.mask_prob,
                    last_ratio=cfg.last_ratio, **tf)

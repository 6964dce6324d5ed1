"""`RunConfig`: everything one training run needs (dataset, model, train, eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmesr.config import resolve_path
from dmesr.errors import ConfigError
from dmesr.models.dmesr import DMESRConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetRef(_Strict):
    """Where the prepared dataset is: `paths.prepared`, built from `paths.config` if absent."""

    paths: dict[str, str | None] = Field(
        default_factory=dict,
        description="prepared: prepared dataset dir; config: dataset YAML used to build it "
        "when `prepared` has no manifest.json (relative paths: to the YAML file)",
    )

    def prepared_dir(self) -> Path:
        value = self.paths.get("prepared")
        if not value:
            raise ConfigError("dataset.paths.prepared is required")
        return resolve_path(value)

    def config_file(self) -> Path | None:
        value = self.paths.get("config")
        return resolve_path(value) if value else None


class EncoderConfig(_Strict):
    """Where item embeddings come from: an ID table, or DMESR over the feature store."""

    type: Literal["id", "dmesr"] = "id"
    features: str | None = Field(
        None, description="feature store dir (`dmesr embed` output); None: <prepared>/features"
    )
    dmesr: DMESRConfig = Field(default_factory=DMESRConfig)


class ModelConfig(_Strict):
    backbone: Literal["sasrec", "bert4rec", "gru4rec", "pop"] = "sasrec"
    hidden: int = Field(64, ge=1, description="item view width d")
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    inner: int = Field(256, ge=1, description="transformer FFN width at width `hidden`; "
                       "narrower item views (DMESR view_dim) scale it, keeping the ratio")
    gru_hidden: int = Field(128, ge=1, description="GRU state width at width `hidden` "
                            "(scaled like `inner`)")
    dropout: float = Field(0.2, ge=0, lt=1, description="hidden/residual dropout")
    attn_dropout: float = Field(0.2, ge=0, lt=1)
    emb_dropout: float | None = Field(None, description="None: same as dropout")
    norm: Literal["pre", "post"] | None = Field(
        None, description="None: pre for SASRec (paper), post for BERT4Rec"
    )
    act: Literal["gelu", "relu"] = "gelu"
    max_len: int = Field(50, ge=2)
    loss: Literal["bce", "ce", "sampled_softmax"] = "ce"
    n_neg: int = Field(1, ge=1, description="negatives per position for bce/sampled_softmax")
    ce_block_mb: float = Field(
        8.0, gt=0, description="`ce` computes the [positions, items] logits in row blocks "
        "of at most this many MiB (same loss and gradients): the loss's peak memory stays "
        "flat as the catalogue grows. Measured (benchmarks/ce_blocks.py, 1 thread): H&M "
        "sample 561 -> 94 MB and 1.5x faster; ML-100K 90 -> 56 MB, same speed")
    mask_prob: float = Field(0.2, gt=0, lt=1, description="BERT4Rec cloze mask probability")
    last_ratio: float = Field(0.1, ge=0, le=1, description="BERT4Rec last-item-only share")
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)

    @property
    def view_width(self) -> int:
        """Width of each item view, i.e. of the shared backbone."""
        if self.encoder.type == "dmesr":
            return self.encoder.dmesr.view_dim or max(2, self.hidden // 2)
        return self.hidden

    def scaled(self, width: int) -> int:
        """A backbone size given at width `hidden`, scaled to the view width."""
        return max(1, round(width * self.view_width / self.hidden))

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        width = self.view_width
        if self.backbone in ("sasrec", "bert4rec") and width % self.heads:
            raise ValueError(f"backbone width ({width}) must be divisible by heads ({self.heads})")
        return self


class TrainConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(400, ge=1, description="maximum epochs")
    patience: int = Field(20, ge=1, description="evaluations without improvement before stop")
    eval_every: int = Field(1, ge=1, description="validate every N epochs")
    seed: int = 2026
    threads: int = Field(2, ge=1, description="torch intra-op threads")
    grad_clip: float | None = Field(None, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="stop (and keep best) after this")
    tensorboard: bool = True
    progress: bool = True


class EvalConfig(_Strict):
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20])
    mrr_k: int = 10
    select_metric: str = Field("NDCG@10", description="validation metric (full ranking)")
    exclude_history: bool = True
    sampled: bool = True
    chunk_users: int = Field(256, ge=1, description="users per evaluation chunk (bounds memory)")
    head_item_frac: float = Field(0.2, gt=0, lt=1, description="top share of items = head")
    head_user_frac: float = Field(0.2, gt=0, lt=1, description="longest share of users = head")


class RunConfig(_Strict):
    dataset: DatasetRef = Field(default_factory=DatasetRef)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

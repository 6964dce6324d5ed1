"""Configuration of Stage A: MLLM enhancement (`enhance:`) and the encoders (`embed:`).

Both live in one YAML file (e.g. configs/enhance/local.yaml) because `dmesr embed` must
know which model's descriptions to embed; overrides are dotted (`enhance.local.max_tokens=24`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmesr.config import load_config, resolve_path
from dmesr.io import available_cores

View = Literal["img", "txt", "mm"]


class OpenAIConfig(BaseModel):
    """Any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp server, hosted APIs)."""

    model_config = ConfigDict(extra="forbid")

    base_urls: list[str] = Field(
        ["http://127.0.0.1:8000/v1"],
        min_length=1,
        description="one or more endpoints ending in /v1; requests are spread over all of them",
    )
    model: str = Field("default", description="model name sent in each request")
    mode: Literal["chat", "completion"] = Field(
        "chat",
        description="chat: /chat/completions with image parts; completion: /completions "
        "(base models, text only)",
    )
    api_key_env: str | None = Field(
        None, description="name of the environment variable holding the API key (never the key)"
    )
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once, in all")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout")
    connect_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(5, ge=0, description="retries on 429 / 5xx / connection errors")
    backoff_base_s: float = Field(0.5, ge=0, description="first retry delay; doubles each retry")
    backoff_max_s: float = Field(30.0, ge=0, description="cap on one delay (also on Retry-After)")
    max_tokens: int = Field(160, ge=1)
    temperature: float = Field(0.2, ge=0)
    stop: list[str] = Field(default_factory=list)
    image_max_side: int = Field(
        768, ge=32, description="images are downscaled to this longest side before upload"
    )
    extra_body: dict[str, object] = Field(
        default_factory=dict, description="extra JSON fields merged into every request body"
    )

    @field_validator("base_urls")
    @classmethod
    def _strip_slash(cls, urls: list[str]) -> list[str]:
        return [u.rstrip("/") for u in urls]


class LocalConfig(BaseModel):
    """Offline stand-in: EfficientNet-Lite0 labels for `img`, Gemma-3 270M (GGUF) for `txt`."""

    model_config = ConfigDict(extra="forbid")

    gguf_path: str | None = Field(
        None, description="GGUF model file; None assembles the packaged Gemma-3 270M Q4_K_M"
    )
    n_ctx: int = Field(1024, ge=128)
    n_threads: int = Field(
        1, ge=1,
        description="llama.cpp threads. 1 is the robust choice on a shared 2-core box: its "
        "threads spin at barriers, so 2 threads ran 0.5 s/item idle but 3-13 s/item when "
        "other jobs held the cores, while 1 thread stayed at 0.9 s/item",
    )
    n_batch: int = Field(256, ge=8)
    workers: int | None = Field(
        None, ge=1, description="llama.cpp models generating `txt` side by side (threads of "
        "one process; each model uses n_threads). None: one per CPU core, at most 4. The "
        "answers do not depend on it: every item starts from a fresh context, greedy")
    batch: int = Field(
        8, ge=1, le=64, description="`txt` prompts one model decodes together (one llama.cpp "
        "context, a sequence each): the weights are read once per step for all of them, "
        "1.9x the items/s of batch 1 on one core. Greedy either way; answers can drift from "
        "batch 1's after a near-tie, and are reproducible for a given batch size and order")
    max_tokens: int = Field(32, ge=1, description="per answer; decides the run time on a CPU")
    temperature: float = Field(0.0, ge=0, description="0 = greedy (reproducible)")
    repeat_penalty: float = Field(1.15, ge=1.0)
    stop: list[str] = Field(default_factory=lambda: ["\n", "Catalogue entry"])
    seed: int = 0
    degenerate_retries: int = Field(
        1, ge=0, description="on a degenerate answer, resample at retry_temperature this often"
    )
    retry_temperature: float = Field(0.7, gt=0)
    top_labels: int = Field(5, ge=1, le=20, description="ImageNet labels kept for `img`")
    min_label_prob: float = Field(0.03, ge=0, le=1)

    def n_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        return max(1, min(4, available_cores() // self.n_threads))


class EnhanceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["openai", "local"] = "local"
    views: list[View] = Field(default_factory=lambda: ["img", "txt", "mm"])
    templates: str = Field("default", description="packaged template set name or a YAML path")
    max_field_chars: int = Field(1200, ge=50, description="cut each text field in prompts")
    cache_dir: str | None = Field(
        None, description="where the JSONL caches live; None = <data>/enhance"
    )
    fsync_every: int = Field(32, ge=1, description="fsync the cache after this many lines")
    fsync_interval_s: float = Field(2.0, gt=0, description="... or after this many seconds")
    error_samples: int = Field(5, ge=0, description="error samples per view in the report")
    max_failures: int = Field(
        3, ge=1, description="a rerun retries a failed item until it failed this often "
        "(answers judged degenerate at temperature 0 are final: they would repeat)"
    )
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)

    def model_tag(self) -> str:
        """Filesystem-safe name of what generates the text: one cache folder per model."""
        if self.backend == "local":
            gguf = Path(self.local.gguf_path).stem if self.local.gguf_path else "gemma-3-270m-q4_k_m"
            raw = f"local-{gguf}"
        else:
            raw = f"openai-{self.openai.model}-{self.openai.mode}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("_")

    def cache_root(self, data_dir: str | Path) -> Path:
        base = resolve_path(self.cache_dir) if self.cache_dir else Path(data_dir) / "enhance"
        return base / self.model_tag()


class EmbedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out_dir: str | None = Field(None, description="feature store folder; None = <data>/features")
    text_model: str | None = Field(
        None, description="sentence-transformers model folder; None = packaged all-MiniLM-L6-v2"
    )
    normalize: bool = Field(True, description="L2-normalise text embeddings")
    batch_size: int = Field(64, ge=1)
    image_batch_size: int = Field(32, ge=1)
    threads: int = Field(2, ge=1, description="torch intra-op threads")
    max_seq_length: int = Field(256, ge=16)
    text_fields: list[str] | None = Field(None, description="None = all of the dataset's")
    mllm_views: bool = Field(True, description="embed the cached MLLM descriptions")
    image_encoder: bool = Field(True, description="add the `img_enc` view when images exist")


class StageAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enhance: EnhanceConfig = Field(default_factory=EnhanceConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)


def load_stage_a(paths: list[str | Path] | None, overrides: list[str] | None) -> StageAConfig:
    return load_config(StageAConfig, paths or [], overrides or [])

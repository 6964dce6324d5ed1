"""`dmesr embed`: encode every original text field, every MLLM view and the images, once.

Each view is a job with an inputs hash (encoder identity + the exact inputs). A view whose
sidecar already records the same inputs hash and dataset hash is up to date and skipped,
so a second run does no work; a view is written only when complete (sidecar last), so an
interrupted run redoes at most the view it was on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dmesr.config import resolve_path
from dmesr.data.dataset import PreparedDataset
from dmesr.enhance.config import StageAConfig
from dmesr.enhance.prompts import image_sha, is_blank
from dmesr.enhance.runner import DESCRIPTIONS
from dmesr.errors import ArtifactMismatchError
from dmesr.features.store import item_order_hash, write_view
from dmesr.io import provenance, read_json, stable_hash

Log = Callable[[str], None]


@dataclass
class Job:
    name: str
    kind: str  # mllm | text | image
    inputs: list[Any]  # per item 1..n: a text, an image path, or None (masked)
    extra_meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EmbedSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    units: dict[str, int] = field(default_factory=dict)


def _texts_by_item(ds: PreparedDataset, column: pd.Series) -> list[str | None]:
    return [None if is_blank(v) else " ".join(str(v).split()) for v in column]


def text_jobs(ds: PreparedDataset, fields: list[str] | None) -> list[Job]:
    items = ds.items.sort_values("item")
    jobs = []
    for f in fields or ds.text_fields:
        if f not in items.columns:
            raise ArtifactMismatchError(f"text field '{f}' is not in {ds.root}/items.parquet")
        jobs.append(Job(f"text_{f}", "text", _texts_by_item(ds, items[f]), {"field": f}))
    return jobs


def mllm_jobs(ds: PreparedDataset, cache_root: Path, log: Log) -> list[Job]:
    path = cache_root / DESCRIPTIONS
    meta_path = cache_root / "descriptions.json"
    if not path.exists() or not meta_path.exists():
        log(f"embed: no MLLM descriptions at {path} (run `dmesr enhance` first); "
            "MLLM views skipped")
        return []
    meta = read_json(meta_path)
    ds.check_hash(str(meta.get("content_hash")), str(path))
    df = pd.read_parquet(path)
    jobs = []
    for view, tmpl in meta.get("templates", {}).items():
        rows = df[df["view"] == view]
        if rows.empty:
            continue
        texts: list[str | None] = [None] * ds.n_items
        for item, text in zip(rows["item"], rows["text"], strict=True):
            texts[int(item) - 1] = str(text)
        prompt = {"backend": meta["backend"], "template": tmpl,
                  "prompt_hashes_hash": stable_hash(sorted(zip(rows["item"].tolist(),
                                                               rows["prompt_hash"].tolist(), strict=True)))}
        jobs.append(Job(f"mllm_{view}", "mllm", texts, {"view": view, "prompt": prompt,
                                                        "descriptions": str(path)}))
    return jobs


def image_job(ds: PreparedDataset) -> Job | None:
    items = ds.items.sort_values("item")
    if "image_path" not in items.columns:
        return None
    ok = items["image_path"].notna()
    if "image_status" in items.columns:
        ok &= items["image_status"] == "ok"
    if not ok.any():
        return None
    paths = [str(p) if good else None for p, good in zip(items["image_path"], ok, strict=True)]
    return Job("img_enc", "image", paths)


def run_embed(
    data_dir: str | Path,
    cfg: StageAConfig,
    only: list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    log: Log = print,
) -> EmbedSummary:
    ds = PreparedDataset(data_dir)
    ecfg = cfg.embed
    out = resolve_path(ecfg.out_dir) if ecfg.out_dir else Path(data_dir) / "features"
    jobs = text_jobs(ds, ecfg.text_fields)
    if ecfg.mllm_views:
        jobs += mllm_jobs(ds, cfg.enhance.cache_root(data_dir), log)
    img = image_job(ds) if ecfg.image_encoder else None
    if img is not None:
        jobs.append(img)
    if only:
        jobs = [j for j in jobs if j.name in only or j.kind in only]
    encoders = _Encoders(cfg)
    summary = EmbedSummary()
    base = {"content_hash": ds.content_hash, "item_order_hash": item_order_hash(ds),
            "n_items": ds.n_items, "dataset": str(ds.root)}
    for job in jobs:
        _run_job(job, encoders, out, base, force, progress, log, summary)
    if not summary.written:
        log(f"embed: nothing to do, all {len(summary.skipped)} view(s) in {out} are up to date")
    return summary


class _Encoders:
    """Encoders are created on first use: an up-to-date store loads no model at all."""

    def __init__(self, cfg: StageAConfig) -> None:
        self.cfg = cfg.embed
        self._text: Any = None
        self._image: Any = None

    @property
    def text(self) -> Any:
        if self._text is None:
            from dmesr.features.text import TextEncoder

            c = self.cfg
            self._text = TextEncoder(resolve_path(c.text_model) if c.text_model else None,
                                     c.batch_size, c.max_seq_length, c.normalize, c.threads)
        return self._text

    @property
    def image(self) -> Any:
        if self._image is None:
            from dmesr.features.image import ImageEncoder

            self._image = ImageEncoder(threads=self.cfg.threads)
        return self._image

    def identity(self, kind: str) -> dict[str, Any]:
        if kind == "image":
            from dmesr.features.image import FEATURE_DIM, ImageEncoder

            return {"name": ImageEncoder.name, "version": ImageEncoder.version,
                    "dim": FEATURE_DIM, "pooling": "global average of the last feature map"}
        return self.text.describe()


def _inputs_hash(job: Job, encoder: dict[str, Any]) -> str:
    inputs = [image_sha(p) if p else None for p in job.inputs] if job.kind == "image" else job.inputs
    return stable_hash([encoder, inputs])


def _run_job(
    job: Job,
    enc: _Encoders,
    out: Path,
    base: dict[str, Any],
    force: bool,
    progress: bool,
    log: Log,
    summary: EmbedSummary,
) -> None:
    identity = enc.identity(job.kind)
    inputs_hash = _inputs_hash(job, identity)
    sidecar = out / f"{job.name}.json"
    if not force and sidecar.exists() and (out / f"{job.name}.npy").exists():
        old = read_json(sidecar)
        if old.get("inputs_hash") == inputs_hash and old.get("content_hash") == base["content_hash"]:
            summary.skipped.append(job.name)
            return
    t0 = time.perf_counter()
    present = [i for i, x in enumerate(job.inputs) if x is not None]
    if job.kind == "image":
        feats, ok = _encode_images(job, enc, present, progress)
    else:
        feats, ok = _encode_texts(job, enc, present, progress)
    n = len(job.inputs)
    full = np.zeros((n + 1, feats.shape[1]), dtype=np.float32)
    mask = np.zeros(n + 1, dtype=bool)
    rows = np.asarray(present, dtype=np.int64)[ok] + 1
    full[rows] = feats[ok]
    mask[rows] = True
    meta = {**base, "kind": job.kind, "encoder": identity, "inputs_hash": inputs_hash,
            **job.extra_meta, **provenance(what=f"feature view {job.name}")}
    write_view(out, job.name, full, mask, meta)
    secs = time.perf_counter() - t0
    summary.written.append(job.name)
    summary.seconds[job.name] = secs
    summary.units[job.name] = len(present)
    log(f"embed {job.name}: {int(mask.sum())}/{n} items, dim {full.shape[1]}, {secs:.1f}s")


def _encode_texts(
    job: Job, enc: _Encoders, present: list[int], progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    texts = [str(job.inputs[i]) for i in present]
    te = enc.text
    _ = te.dim  # load the model before the bar starts, so its ETA is about encoding only
    with tqdm(total=te.n_units(texts), desc=f"embed {job.name}", unit="text",
              disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:
        feats = te.encode(texts, progress=bar) if texts else np.zeros((0, te.dim), np.float32)
    return feats, np.ones(len(texts), dtype=bool)


def _encode_images(
    job: Job, enc: _Encoders, present: list[int], progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    paths = [job.inputs[i] for i in present]
    bs = enc.cfg.image_batch_size
    _ = enc.image.model  # load before the bar starts
    feats = np.zeros((len(paths), enc.image.dim), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    with tqdm(total=len(paths), desc=f"embed {job.name}", unit="img", disable=not progress,
              dynamic_ncols=True, mininterval=0.5) as bar:
        for s in range(0, len(paths), bs):
            batch = enc.image.encode(paths[s : s + bs])
            feats[s : s + bs], ok[s : s + bs] = batch.features, batch.ok
            bar.update(len(batch.ok))
    return feats, ok

"""The id-aligned feature store: one frozen-encoder view per file set, loaded safely.

Layout of a store folder (default `<data>/features/`), per view NAME:
  NAME.npy        float32 [n_items + 1, dim]; row i = item i, row 0 = padding (zeros)
  NAME.mask.npy   bool [n_items + 1]; False where the item has no such input (row 0 too)
  NAME.json       sidecar, written last (its presence marks the view complete): encoder
                  name / version / dim, the dataset's content_hash and item-order hash,
                  coverage, the prompt identity for MLLM views, file hashes, provenance.

View names: `mllm_img`, `mllm_txt`, `mllm_mm` (embedded MLLM descriptions), `text_<field>`
(each original text field), `img_enc` (direct image-encoder features).

Like Cornac's FeatureModality, a loaded `FeatureView` is addressed by item id; unlike a bare
array, loading refuses features that were built for another dataset or item order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmesr.data.dataset import PreparedDataset
from dmesr.errors import ArtifactMismatchError, DmesrError
from dmesr.io import load_npy, read_json, save_npy, sha256_file, stable_hash, write_json

KINDS = ("mllm", "text", "image")


def item_order_hash(ds: PreparedDataset) -> str:
    """Hash of the item keys in id order: features are only valid for this exact order."""
    keys = ds.items.sort_values("item")["item_key"].astype(str).tolist()
    return stable_hash(keys)


@dataclass
class FeatureView:
    """Features of one view, row-aligned with item ids (row 0 = padding)."""

    name: str
    features: np.ndarray  # float32 [n_items + 1, dim]
    mask: np.ndarray  # bool [n_items + 1]
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def coverage(self) -> float:
        return float(self.mask[1:].mean()) if len(self.mask) > 1 else 0.0

    def batch(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features [..., dim], mask [...]) for an array of item ids (0 = padding)."""
        ids = np.asarray(item_ids)
        return self.features[ids], self.mask[ids]


def write_view(
    root: str | Path, name: str, features: np.ndarray, mask: np.ndarray, meta: dict[str, Any]
) -> Path:
    """Write arrays first and the sidecar last, each atomically (sidecar = completion mark)."""
    root = Path(root)
    if features.dtype != np.float32 or features.ndim != 2 or mask.shape != features.shape[:1]:
        raise ValueError(f"{name}: expected float32 [n+1, d] features and a [n+1] mask")
    features = features.copy()
    features[~mask] = 0.0  # masked rows (and padding) carry no signal
    feat_path, mask_path = root / f"{name}.npy", root / f"{name}.mask.npy"
    save_npy(feat_path, features)
    save_npy(mask_path, mask.astype(bool))
    sidecar = {**meta, "name": name, "dim": int(features.shape[1]),
               "rows": int(features.shape[0]),
               "coverage": {"items": int(mask[1:].sum()), "of": int(len(mask) - 1)},
               "files": {"features": feat_path.name, "mask": mask_path.name,
                         "features_sha256": sha256_file(feat_path),
                         "mask_sha256": sha256_file(mask_path)}}
    write_json(root / f"{name}.json", sidecar)
    return root / f"{name}.json"


class FeatureStore:
    """Reads the views of a store folder and checks them against a prepared dataset."""

    def __init__(self, root: str | Path, dataset: PreparedDataset | str | Path | None = None):
        self.root = Path(root)
        if dataset is not None and not isinstance(dataset, PreparedDataset):
            dataset = PreparedDataset(dataset)
        self.dataset = dataset
        if not self.root.is_dir():
            raise DmesrError(f"no feature store at {self.root}; run `dmesr embed` first")

    @classmethod
    def for_dataset(cls, data_dir: str | Path) -> FeatureStore:
        return cls(Path(data_dir) / "features", data_dir)

    @property
    def views(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json") if not p.name.startswith("."))

    def views_of(self, kind: str) -> list[str]:
        return [v for v in self.views if self.meta(v).get("kind") == kind]

    def meta(self, name: str) -> dict[str, Any]:
        path = self.root / f"{name}.json"
        if not path.is_file():
            raise DmesrError(f"feature view '{name}' not in {self.root} (has: {self.views})")
        return read_json(path)

    def load(self, name: str, mmap: bool = False, verify: bool = False) -> FeatureView:
        meta = self.meta(name)
        self._check_dataset(name, meta)
        feats = load_npy(self.root / meta["files"]["features"], mmap=mmap)
        mask = load_npy(self.root / meta["files"]["mask"])
        self._check_shapes(name, meta, feats, mask)
        if verify:
            self._check_files(name, meta)
        return FeatureView(name, feats, mask.astype(bool), meta)

    def load_many(self, names: list[str], mmap: bool = False) -> dict[str, FeatureView]:
        return {n: self.load(n, mmap=mmap) for n in names}

    def _check_dataset(self, name: str, meta: dict[str, Any]) -> None:
        if self.dataset is None:
            return
        where = f"feature view '{name}' ({self.root / (name + '.json')})"
        self.dataset.check_hash(str(meta.get("content_hash")), where)
        if meta.get("item_order_hash") != item_order_hash(self.dataset):
            raise ArtifactMismatchError(
                f"{where} was built for another item order than {self.dataset.root}; "
                "run `dmesr embed` again"
            )

    def _check_shapes(
        self, name: str, meta: dict[str, Any], feats: np.ndarray, mask: np.ndarray
    ) -> None:
        rows = self.dataset.n_items + 1 if self.dataset is not None else int(meta["rows"])
        expected = (rows, int(meta["dim"]))
        if feats.shape != expected or feats.dtype != np.float32:
            raise ArtifactMismatchError(
                f"{self.root / meta['files']['features']}: shape {feats.shape} {feats.dtype}, "
                f"expected {expected} float32 (n_items + 1 rows, row 0 = padding); "
                "run `dmesr embed` again"
            )
        if mask.shape != (rows,):
            raise ArtifactMismatchError(
                f"{self.root / meta['files']['mask']}: shape {mask.shape}, expected ({rows},)"
            )

    def _check_files(self, name: str, meta: dict[str, Any]) -> None:
        for key in ("features", "mask"):
            path = self.root / meta["files"][key]
            if sha256_file(path) != meta["files"][f"{key}_sha256"]:
                raise ArtifactMismatchError(f"{path} does not match its sidecar's sha256")

    def record(self, names: list[str]) -> dict[str, Any]:
        """What a model reading `names` takes from this store: the folder and, per view it
        holds, the sha256 of its files (from the sidecars, not re-hashed). A run keeps it in
        run.json, because its feature tables are not in its checkpoints."""
        views = {}
        for name in names:
            if (self.root / f"{name}.json").is_file():
                files = self.meta(name)["files"]
                views[name] = {"features_sha256": files["features_sha256"],
                               "mask_sha256": files["mask_sha256"]}
        return {"store": str(self.root), "views": views}

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for v in self.views:
            m = self.meta(v)
            rows.append({"view": v, "kind": m.get("kind"), "dim": m.get("dim"),
                         "encoder": m.get("encoder", {}).get("name"),
                         "coverage": f"{m['coverage']['items']}/{m['coverage']['of']}"})
        return rows


def feature_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the views in `now` (a `FeatureStore.record`) differ from `saved`; the folder may
    move (archived runs, clones), only the files' content counts."""
    old, new = saved.get("views", {}), now.get("views", {})
    changes = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            changes.append(f"{name} is gone")
        elif name not in old:
            changes.append(f"{name} was not there")
        elif old[name] != new[name]:
            changes.append(f"{name} changed ({_changed_files(old[name], new[name])})")
    return changes


def _changed_files(old: dict[str, str], new: dict[str, str]) -> str:
    """'features sha256 ab12… now cd34…' for each file of a view whose hash differs."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k.removesuffix('_sha256')} sha256 {str(old.get(k))[:12]}… "
                     f"now {str(new.get(k))[:12]}…" for k in keys)


def check_features(saved: dict[str, Any] | None, now: dict[str, Any] | None, what: str) -> None:
    """Refuse `what` (a run) when the feature views it read differ from the store's now.
    Runs from before runs recorded their features (`saved` None) cannot be checked."""
    if not saved or not now:
        return
    if changes := feature_changes(saved, now):
        raise ArtifactMismatchError(
            f"{what} read other features than {now['store']} holds now: {'; '.join(changes)}; "
            "train it again (--overwrite) or point model.encoder.features at the store it read"
        )

"""Several seeds -> mean ± std; a run vs a named baseline -> paired per-user tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from dmesr.errors import ArtifactMismatchError, DmesrError
from dmesr.io import load_npy, read_json


def aggregate(runs: list[Path]) -> dict[str, dict[str, float]]:
    """Numeric metrics.json keys common to all runs -> {mean, std (ddof=1), n}."""
    all_metrics = [read_json(Path(r) / "metrics.json") for r in runs]
    keys = [k for k, v in all_metrics[0].items()
            if isinstance(v, int | float) and all(k in m for m in all_metrics)]
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([float(m[key]) for m in all_metrics])
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out[key] = {"mean": float(values.mean()), "std": std, "n": len(values)}
    return out


def _dataset_hash(run: Path) -> str:
    return str(read_json(run / "run.json")["dataset"]["content_hash"])


def per_user(run: Path, split: str, mode: str) -> tuple[np.ndarray, list[str]]:
    folder = Path(run) / "per_user"
    path = folder / f"{split}.{mode}.metrics.npy"
    if not path.exists():
        raise DmesrError(f"{path} is missing; run `dmesr evaluate --run {run}` first")
    return load_npy(path), read_json(folder / "columns.json")["metrics"]


def paired_tests(
    run: Path, baseline: Path, split: str = "test", mode: str = "full",
    metrics: tuple[str, ...] = ("NDCG@10", "HR@10", "MRR@10"),
) -> dict[str, dict[str, float]]:
    """Wilcoxon signed-rank and paired t-test on per-user metric vectors (same users)."""
    if _dataset_hash(run) != _dataset_hash(baseline):
        raise ArtifactMismatchError(f"{run} and {baseline} were evaluated on different datasets")
    a, cols = per_user(run, split, mode)
    b, cols_b = per_user(baseline, split, mode)
    if a.shape != b.shape or cols != cols_b:
        raise ArtifactMismatchError(f"{run} and {baseline} have different per-user layouts")
    out: dict[str, dict[str, float]] = {}
    for name in metrics:
        x, y = a[:, cols.index(name)], b[:, cols.index(name)]
        diff = x - y
        if np.all(diff == 0):
            w_p = t_p = 1.0
        else:
            w_p = float(stats.wilcoxon(x, y, zero_method="wilcox").pvalue)
            t_p = float(stats.ttest_rel(x, y).pvalue)
        out[name] = {
            "run": float(x.mean()), "baseline": float(y.mean()), "diff": float(diff.mean()),
            "wilcoxon_p": w_p, "ttest_p": t_p if not math.isnan(t_p) else 1.0,
            "n_users": len(x), "n_better": int((diff > 0).sum()), "n_worse": int((diff < 0).sum()),
        }
    return out

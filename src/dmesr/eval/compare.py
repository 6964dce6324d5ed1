"""Several seeds -> mean ± std; a run vs a named baseline -> paired per-user tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from dmesr.errors import ArtifactMismatchError, DmesrError
from dmesr.eval.metrics import per_user_metrics
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
    """float64 [U, M] per-user metrics and their names; computed from the per-user ranks
    when only those were kept (an archived run, see dmesr.report.archive)."""
    folder = Path(run) / "per_user"
    path = folder / f"{split}.{mode}.metrics.npy"
    ranks = folder / f"{split}.{mode}.ranks.npy"
    if not path.exists() and not ranks.exists():
        raise DmesrError(f"{path} is missing; run `dmesr evaluate --run {run}` first")
    names = read_json(folder / "columns.json")["metrics"]
    if path.exists():
        return load_npy(path), names
    return metrics_from_ranks(load_npy(ranks), names), names


def metrics_from_ranks(ranks: np.ndarray, names: list[str]) -> np.ndarray:
    """[U, len(names)] per-user metrics for names like HR@10, NDCG@10, MRR@10."""
    ks = sorted({int(n.split("@")[1]) for n in names if not n.startswith("MRR@")})
    mrr = [int(n.split("@")[1]) for n in names if n.startswith("MRR@")]
    values = per_user_metrics(ranks, ks, mrr[0] if mrr else 10)
    return np.stack([values[n] for n in names], axis=1)


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

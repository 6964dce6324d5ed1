"""PNG plots of an experiment (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dmesr.io import atomic_path  # noqa: E402
from dmesr.report.collect import Experiment, mean_std  # noqa: E402
from dmesr.report.tables import GROUPS  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


Stat = Callable[[str, str], tuple[float, float]]


def _bars(ax: plt.Axes, xs: list[str], hues: list[str], stat: Stat) -> None:
    """Grouped bars: one group per x, one bar per hue; `stat(x, hue)` = (mean, std)."""
    width = 0.8 / max(len(hues), 1)
    cmap = plt.get_cmap("tab10" if len(hues) <= 10 else "tab20")
    for j, hue in enumerate(hues):
        ms = np.array([stat(x, hue) for x in xs], dtype=float).reshape(-1, 2)
        pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        ax.bar(pos, ms[:, 0], width, yerr=ms[:, 1], capsize=2, label=hue,
               color=cmap(j % cmap.N))
    ax.set_xticks(np.arange(len(xs)))
    ax.grid(axis="y", alpha=0.3)


def _stat(df: pd.DataFrame, col: str) -> tuple[float, float]:
    if col not in df or df.empty:
        return np.nan, 0.0
    mean, std, _ = mean_std(df[col])
    return mean, std


def metric_bars(exp: Experiment, df: pd.DataFrame, mode: str, path: Path) -> Path:
    """Test NDCG@10 and HR@10 per variant (x) and backbone (colour), mean ± std over seeds."""
    variants, backbones = exp.variants(), exp.backbones()
    metrics = ["NDCG@10", "HR@10"]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.0 * len(variants) * 2), 4.2))
    for ax, metric in zip(axes, metrics, strict=True):
        col = f"test_{mode}_{metric}"
        _bars(ax, variants, backbones, lambda v, b, col=col: _stat(
            df[(df.variant == v) & (df.backbone == b)], col))
        ax.set_xticklabels(variants, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"test {metric} ({mode} ranking)")
    axes[0].legend(title="backbone", fontsize=8)
    fig.suptitle(f"{exp.dataset()}: mean ± std over seeds", fontsize=10)
    _save(fig, path)
    return path


def group_bars(exp: Experiment, df: pd.DataFrame, path: Path) -> Path:
    """Test NDCG@10 (full) on tail/head users and items: one panel per backbone."""
    backbones = exp.backbones()
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.2 * len(backbones), 4.2),
                             squeeze=False)
    for ax, backbone in zip(axes[0], backbones, strict=True):
        sub = df[df.backbone == backbone]
        variants = [v for v in exp.variants() if v in set(sub.variant)]
        _bars(ax, [g for g, _ in GROUPS], variants, lambda g, v, sub=sub: _stat(
            sub[sub.variant == v], f"test_full_{g}_NDCG@10"))
        ax.set_xticklabels([label for _, label in GROUPS], fontsize=8)
        ax.set_title(f"{backbone}: test NDCG@10 by group")
        ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    return path


def _curve(run_dir: Path) -> tuple[list[int], list[float]]:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return [], []
    recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    recs = [r for r in recs if "valid.full.NDCG@10" in r]
    return [r["epoch"] for r in recs], [r["valid.full.NDCG@10"] for r in recs]


def valid_curves(exp: Experiment, path: Path) -> Path:
    """Validation NDCG@10 (full) per epoch: one panel per backbone, one colour per variant,
    one line per seed."""
    backbones = exp.backbones()
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.2 * len(backbones), 4.0),
                             squeeze=False)
    variants = exp.variants()
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    for ax, backbone in zip(axes[0], backbones, strict=True):
        seen = set()
        for run in sorted((r for r in exp.runs if r.backbone == backbone),
                          key=lambda r: (variants.index(r.variant), r.seed)):
            x, y = _curve(run.path)
            if not x:
                continue
            label = None if run.variant in seen else run.variant
            seen.add(run.variant)
            ax.plot(x, y, color=cmap(variants.index(run.variant) % cmap.N), lw=1.2,
                    alpha=0.8, label=label, marker="." if len(x) < 15 else None)
        ax.set_title(f"{backbone}: validation NDCG@10 (full)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if seen:
            ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    return path


def write_plots(exp: Experiment, df: pd.DataFrame, folder: Path) -> list[str]:
    """All plots into `folder`; returns their file names (for results.md)."""
    paths = [metric_bars(exp, df, mode, folder / f"bars_test_{mode}.png")
             for mode in exp.protocols() if f"test_{mode}_NDCG@10" in df]
    paths.append(group_bars(exp, df, folder / "groups_test_full.png"))
    paths.append(valid_curves(exp, folder / "valid_curves.png"))
    return [p.name for p in paths]

"""PNG plots of an experiment (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from dmesr.io import atomic_path, read_jsonl
from dmesr.report.collect import Experiment, mean_std
from dmesr.report.tables import GROUPS


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


Stat = Callable[[str, str], tuple[float, float]]
_PALETTE = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)


def _color(i: int) -> tuple[float, float, float]:
    return _PALETTE[i % len(_PALETTE)]


def _bars(ax: plt.Axes, xs: list[str], hues: list[str], stat: Stat) -> None:
    """Grouped bars: one group per x, one bar per hue; `stat(x, hue)` = (mean, std), std NaN
    where there is no spread to show (one seed): that bar gets no error bar."""
    width = 0.8 / max(len(hues), 1)
    for j, hue in enumerate(hues):
        ms = np.array([stat(x, hue) for x in xs], dtype=float).reshape(-1, 2)
        pos = np.arange(len(xs)) + (j - (len(hues) - 1) / 2) * width
        ax.bar(pos, ms[:, 0], width, label=hue, color=_color(j))
        spread = np.isfinite(ms).all(axis=1)
        ax.errorbar(pos[spread], ms[spread, 0], yerr=ms[spread, 1], fmt="none",
                    ecolor="black", elinewidth=1, capsize=2)
    ax.set_xticks(np.arange(len(xs)))
    ax.grid(axis="y", alpha=0.3)


def _stat(df: pd.DataFrame, col: str) -> tuple[float, float]:
    if col not in df or df.empty:
        return np.nan, np.nan
    mean, std, n = mean_std(df[col])
    return mean, std if n > 1 else np.nan


def metric_bars(exp: Experiment, df: pd.DataFrame, mode: str, path: Path) -> Path:
    """Test NDCG@10 and HR@10 per variant (x) and backbone (colour), mean ± std over seeds."""
    variants, backbones = exp.variants(), exp.backbones()
    metrics = ["NDCG@10", "HR@10"]
    # metrics stacked vertically: a full grid has ~13 variants × 3 backbones per panel
    width = max(7.0, len(variants) * (0.22 * len(backbones) + 0.35))
    fig, axes = plt.subplots(2, 1, figsize=(width, 7.5), constrained_layout=True)
    for ax, metric in zip(axes, metrics, strict=True):
        col = f"test_{mode}_{metric}"
        _bars(ax, variants, backbones, lambda v, b, col=col: _stat(
            df[(df.variant == v) & (df.backbone == b)], col))
        ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"test {metric} ({mode} ranking)")
    axes[0].legend(title="backbone", fontsize=8)
    fig.suptitle(f"{exp.dataset()}: mean ± std over seeds (no error bar: one seed)", fontsize=10)
    _save(fig, path)
    return path


def group_bars(exp: Experiment, df: pd.DataFrame, path: Path) -> Path:
    """Test NDCG@10 (full) on tail/head users and items: one row per backbone, variants on
    x, one bar per group (ablation backbones carry ~13 variants, so variants get the axis)."""
    backbones = exp.backbones()
    per_bb = {b: [v for v in exp.variants() if v in set(df[df.backbone == b].variant)]
              for b in backbones}
    width = max(7.0, max(len(v) for v in per_bb.values()) * 0.9 + 1.5)
    fig, axes = plt.subplots(len(backbones), 1, figsize=(width, 3.3 * len(backbones)),
                             squeeze=False, constrained_layout=True)
    for ax, backbone in zip(axes[:, 0], backbones, strict=True):
        sub = df[df.backbone == backbone]
        _bars(ax, per_bb[backbone], [label for _, label in GROUPS],
              lambda v, label, sub=sub: _stat(
                  sub[sub.variant == v], f"test_full_{_GROUP_OF[label]}_NDCG@10"))
        ax.set_xticklabels(per_bb[backbone], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{backbone}: test NDCG@10 (full ranking) by user / item group",
                     fontsize=10)
    top = axes[0, 0]
    top.set_ylim(top=top.get_ylim()[1] * 1.15)  # room for the legend above the bars
    top.legend(fontsize=8, ncol=4, loc="upper left")
    _save(fig, path)
    return path


_GROUP_OF = {label: g for g, label in GROUPS}


def valid_curve(run_dir: Path, metric: str = "valid.full.NDCG@10") -> tuple[list[int], list[float]]:
    """(epochs, scores) of a run's validation metric, from its log.jsonl (empty: no log)."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return [], []
    recs = [r for r in read_jsonl(log) if metric in r]
    return [int(r["epoch"]) for r in recs], [float(r[metric]) for r in recs]


def valid_curves(exp: Experiment, path: Path) -> Path:
    """Validation NDCG@10 (full) per epoch: one panel per backbone, one colour per variant
    (the same in every panel), one line style per seed: seeds stop early at different
    epochs, so they are drawn, not averaged."""
    backbones, variants, seeds = exp.backbones(), exp.variants(), exp.seeds()
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.2 * len(backbones), 4.6),
                             squeeze=False, constrained_layout=True)
    styles = ["-", "--", ":", "-."]
    handles: dict[str, object] = {}
    for ax, backbone in zip(axes[0], backbones, strict=True):
        for run in sorted((r for r in exp.runs if r.backbone == backbone),
                          key=lambda r: (variants.index(r.variant), r.seed)):
            x, y = valid_curve(run.path)
            if x:
                (line,) = ax.plot(x, y, color=_color(variants.index(run.variant)), lw=1.2,
                                  alpha=0.85, marker="." if len(x) < 15 else None,
                                  ls=styles[seeds.index(run.seed) % len(styles)])
                handles.setdefault(run.variant, line)
        ax.set_title(f"{backbone}: validation NDCG@10 (full)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    names = [v for v in variants if v in handles]
    seed_lines = [Line2D([], [], color="black", lw=1.2, ls=styles[i % len(styles)])
                  for i in range(len(seeds))]
    fig.legend([handles[v] for v in names] + seed_lines,
               names + [f"seed {s}" for s in seeds], loc="outside lower center", fontsize=8,
               ncol=min(len(names) + len(seeds), 6))
    _save(fig, path)
    return path


def write_plots(exp: Experiment, df: pd.DataFrame, folder: Path) -> list[str]:
    """All plots into `folder`; returns their file names (for results.md)."""
    paths = [metric_bars(exp, df, mode, folder / f"bars_test_{mode}.png")
             for mode in exp.protocols() if f"test_{mode}_NDCG@10" in df]
    paths.append(group_bars(exp, df, folder / "groups_test_full.png"))
    paths.append(valid_curves(exp, folder / "valid_curves.png"))
    return [p.name for p in paths]

"""The whole job in one command: prepare -> enhance -> embed -> experiment -> table.

Each stage is resumable and skips finished work, so a rerun only prints the table:
the dataset is reused when its sources and parameters are unchanged, the MLLM cache
answers every prompt it already has, feature views are rebuilt only when stale, and
finished training cells are skipped (those trained over feature files rebuilt since, or
with other settings, train again; the old run is kept beside).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from pydantic import BaseModel, ConfigDict, Field

from dmesr.config import build, load_yaml, resolve_path

if TYPE_CHECKING:
    from dmesr.experiment.config import GridConfig

Log = Callable[[str], None]


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    paths: dict[str, str] = Field(description="dataset (YAML), prepared (dir), stage_a (YAML), "
                                  "experiment (grid YAML); relative to this file")
    enhance_views: list[str] | None = Field(None, description="None: the stage-A config's")
    show_metrics: list[str] = Field(default_factory=lambda: [
        "test_full_NDCG@10", "test_full_HR@10", "test_sampled_NDCG@10", "s_per_epoch"])


def _stage(log: Log, number: int, title: str) -> float:
    log(click.style(f"\n== [{number}/5] {title}", bold=True))
    return time.perf_counter()


def run_pipeline(path: Path, log: Log = click.echo, progress: bool = True) -> Path:
    """Run every stage; returns the results folder of the experiment."""
    from dmesr.data.commands import load_dataset_config
    from dmesr.data.prepare import prepare
    from dmesr.enhance.config import load_stage_a
    from dmesr.enhance.runner import run_enhance
    from dmesr.experiment.commands import experiment
    from dmesr.experiment.config import load_grid
    from dmesr.features.embed import run_embed

    cfg = build(PipelineConfig, load_yaml(path), str(path))
    p = {k: resolve_path(v).resolve() for k, v in cfg.paths.items()}
    t_all = time.perf_counter()
    t = _stage(log, 1, "prepare")
    prepare(load_dataset_config(p["dataset"], []), p["prepared"], log=log, progress=progress)
    log(f"   ({time.perf_counter() - t:.1f}s)")
    stage_a = load_stage_a([p["stage_a"]], [])
    t = _stage(log, 2, "enhance: MLLM descriptions (cached)")
    run_enhance(p["prepared"], stage_a.enhance, cfg.enhance_views, progress=progress, log=log)
    log(f"   ({time.perf_counter() - t:.1f}s)")
    t = _stage(log, 3, "embed: frozen encoders -> feature store")
    run_embed(p["prepared"], stage_a, progress=progress, log=log)
    log(f"   ({time.perf_counter() - t:.1f}s)")
    t = _stage(log, 4, "train + evaluate")
    # a cached stage is redone when its inputs changed: cells trained over feature files
    # that were rebuilt since, or whose settings were edited, train again
    args = [str(p["experiment"]), "--rerun-stale", f"dataset.paths.prepared={p['prepared']}"]
    if not progress:
        args.append("--no-progress")
    try:
        experiment.main(args=args, standalone_mode=False)
    except SystemExit as exc:  # the grid exits 1 when a cell failed; the table still shows
        if exc.code:
            log(f"some training cells failed (exit {exc.code}); see the summary above")
    log(f"   ({time.perf_counter() - t:.1f}s)")
    grid = load_grid(p["experiment"])
    _stage(log, 5, "results")
    results = grid.results_path()
    log(summary_table(results / "results.csv", cfg.show_metrics))
    log(f"\nfull report: {results / 'results.md'}  (total {time.perf_counter() - t_all:.0f}s)")
    served = _servable_run(grid)
    if served is not None:
        from dmesr.data.dataset import PreparedDataset

        user = PreparedDataset(p["prepared"]).users["user_key"].iloc[0]
        log(f"top-K lists: dmesr recommend --run {served} --user {user} -k 10")
    return results


def _servable_run(grid: GridConfig) -> Path | None:
    """The last finished run of the grid (DMESR's when the grid has it), for the hint."""
    from dmesr.experiment.cells import expand

    done = [c for c in expand(grid) if (c.out / "checkpoints" / "best.safetensors").is_file()]
    done.sort(key=lambda c: c.variant == "dmesr")
    return done[-1].out if done else None


def summary_table(csv: Path, metrics: list[str]) -> str:
    """Mean ± std per backbone and variant, as a plain-text table."""
    import pandas as pd

    from dmesr.report.collect import mean_std
    from dmesr.report.tables import fmt

    df = pd.read_csv(csv)
    metrics = [m for m in metrics if m in df.columns]
    header = ["backbone", "variant", "seeds", *metrics]
    rows = [[b, v, str(len(g)), *(fmt(*mean_std(g[m])) for m in metrics)]
            for (b, v), g in df.groupby(["backbone", "variant"], sort=False)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join
    out = [line(h.ljust(w) for h, w in zip(header, widths, strict=True)),
           line("-" * w for w in widths)]
    out += [line(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


@click.command("pipeline")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-progress", is_flag=True, help="no progress bars (logs, CI)")
def pipeline(config: Path, no_progress: bool) -> None:
    """Run the whole job (prepare, enhance, embed, train, evaluate) and print the table."""
    run_pipeline(config, progress=not no_progress)
    sys.stdout.flush()

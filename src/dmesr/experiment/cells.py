"""Grid -> cells (backbone × variant × seed), their status and their training command."""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dmesr.errors import ConfigError, DmesrError
from dmesr.experiment.config import GridConfig
from dmesr.io import available_cores


@dataclass(frozen=True)
class Cell:
    backbone: str
    variant: str
    seed: int
    ablation: bool
    configs: tuple[str, ...]
    overrides: tuple[str, ...] = field(default=())
    out: Path = Path()

    @property
    def key(self) -> str:
        return f"{self.backbone}/{self.variant}/seed{self.seed}"

    def argv(self, threads: int) -> list[str]:
        """The `dmesr train` command of this cell (threads and progress do not change a
        run's result, so they stay out of `overrides` and resuming with other ones works)."""
        cmd = [sys.executable, "-m", "dmesr.cli", "train"]
        for cfg in self.configs:
            cmd += ["--config", cfg]
        return [*cmd, "--out", str(self.out), *self.overrides,
                f"train.threads={threads}", "train.progress=false"]

    def is_done(self) -> bool:
        return (self.out / "metrics.json").is_file()

    def status(self) -> str:
        if self.is_done():
            return "done"
        if (self.out / "checkpoints" / "last.safetensors").is_file():
            return "resume"
        return "todo"


def expand(grid: GridConfig, run_overrides: list[str] | None = None) -> list[Cell]:
    """Every cell, seed-major: a grid stopped half-way has whole seeds, not whole variants.

    A cell's settings, later winning: base files < backbone < grid `overrides` < variant <
    command-line run overrides < `train.seed`.
    """
    main = grid.variant_settings("variants")
    abl = {k: v for k, v in grid.variant_settings("ablations").items() if k not in main}
    root = grid.out_dir()
    cells = []
    for seed in grid.seeds:
        for backbone in grid.backbones:
            files, bb_over = grid.backbone_parts(backbone)
            variants = [(n, s, False) for n, s in main.items()]
            if backbone in grid.ablation_backbones:
                variants += [(n, s, True) for n, s in abl.items()]
            for name, settings, ablation in variants:
                cells.append(Cell(
                    backbone=backbone, variant=name, seed=seed, ablation=ablation,
                    configs=(*grid.base, *files),
                    overrides=(*bb_over, *grid.overrides, *settings, *(run_overrides or []),
                               f"train.seed={seed}"),
                    out=root / backbone / name / f"seed{seed}",
                ))
    return cells


def parse_only(specs: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """`backbone=sasrec,variant=dmesr*` -> [{backbone: sasrec, variant: dmesr*}] (globs)."""
    out = []
    for spec in specs:
        cond: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in ("backbone", "variant", "seed"):
                raise ConfigError(f"--only '{spec}': expected backbone=…,variant=…,seed=…")
            cond[key] = value
        out.append(cond)
    return out


def select(cells: list[Cell], only: list[dict[str, str]]) -> list[Cell]:
    """Cells matching any of the --only conditions (all cells when there are none)."""
    if not only:
        return cells

    def match(cell: Cell, cond: dict[str, str]) -> bool:
        values = {"backbone": cell.backbone, "variant": cell.variant, "seed": str(cell.seed)}
        return all(fnmatch.fnmatchcase(values[k], pat) for k, pat in cond.items())

    return [c for c in cells if any(match(c, cond) for cond in only)]


def validate(cell: Cell) -> str | None:
    """None when the cell's RunConfig is valid, else the error (caught before any launch)."""
    from dmesr.config import load_config
    from dmesr.train.config import RunConfig

    try:
        load_config(RunConfig, list(cell.configs), list(cell.overrides))
    except DmesrError as exc:
        return str(exc)
    return None


def finished_status(cell: Cell) -> tuple[str, str | None]:
    """What a finished cell is under the grid now: ("done", None) the run the grid asks;
    ("continue", why) only its stopping rule grew (patience, epochs), so it goes on from
    its last checkpoint; ("stale", why) the variant was edited after the run, the feature
    views it read have other files now, or it cannot go on. A stale cell is kept and
    reported, never silently mixed in."""
    from dmesr.config import load_config
    from dmesr.data.dataset import PreparedDataset
    from dmesr.features.store import feature_changes
    from dmesr.io import read_json
    from dmesr.models import feature_record
    from dmesr.train.config import RunConfig
    from dmesr.train.continuation import plan
    from dmesr.train.trainer import config_changed

    try:
        saved = read_json(cell.out / "run.json")
        cfg = load_config(RunConfig, list(cell.configs), list(cell.overrides))
        if config_changed(saved["comparable_config"], cfg):
            return "stale", "its configuration differs from the grid's now"
        if saved.get("features"):  # runs from before runs recorded their features: unchecked
            now = feature_record(cfg.model, PreparedDataset(cfg.dataset.prepared_dir()))
            if changes := feature_changes(saved["features"], now) if now else []:
                return "stale", f"its feature views changed: {'; '.join(changes)}"
        return plan(cell.out, cfg)
    except (OSError, KeyError, ValueError, DmesrError):
        return "done", None


def stale(cell: Cell) -> str | None:
    """Why a finished cell is stale (None: it is not; see `finished_status`)."""
    status, why = finished_status(cell)
    return why if status == "stale" else None


def threads_per_worker(workers: int) -> int:
    return max(1, available_cores() // workers)

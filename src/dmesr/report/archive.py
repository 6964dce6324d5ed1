"""Finished cells kept next to the results they produced, so a grid can span machines.

Run directories (`runs/…`) hold checkpoints and are not meant for version control. A
report therefore also copies, per finished cell, the few small files a later report
needs into `<results_dir>/runs/<backbone>/<variant>/seed<N>/`: metrics.json, run.json,
config.yaml, log.jsonl and the per-user test ranks (full ranking; the per-user metrics
are recomputed from them). `dmesr experiment` restores archived cells that its run folder
lacks before it plans, so on a fresh clone finished cells are not rerun, and the report
of cells run now includes them, p-values and curves alike.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dmesr.io import atomic_path

ARCHIVE = "runs"
FINISHED = "*/*/seed*/metrics.json"  # <backbone>/<variant>/seed<N>: a finished cell
FILES = ("metrics.json", "run.json", "config.yaml", "log.jsonl", "per_user/columns.json",
         "per_user/test.full.ranks.npy")


def _copy_cell(src: Path, dst: Path) -> None:
    """Copy a cell's archived files; metrics.json last, as it marks the cell finished."""
    for name in sorted(FILES, key=lambda n: n == "metrics.json"):
        if (src / name).is_file():
            with atomic_path(dst / name) as tmp:
                shutil.copyfile(src / name, tmp)


def archive_runs(runs: list[tuple[str, Path]], results_dir: Path) -> None:
    """Copy each finished run (key `backbone/variant/seedN`, its folder) into the archive."""
    root = results_dir / ARCHIVE
    for key, path in runs:
        if path.resolve() != (root / key).resolve():  # a report built from the archive itself
            _copy_cell(path, root / key)


def archived_keys(results_dir: Path) -> list[str]:
    """Keys (`backbone/variant/seedN`) of the cells archived under `results_dir`."""
    root = results_dir / ARCHIVE
    return [str(p.parent.relative_to(root)) for p in sorted(root.glob(FINISHED))]


def restore_runs(results_dir: Path, out: Path, keys: list[str] | None = None) -> list[str]:
    """Copy archived cells into the run folder `out` where it has no folder for them (a
    cell begun here, even unfinished, is never mixed with an archived one). Each cell is
    copied into a hidden folder first and renamed, so a kill leaves no half cell.

    `keys`: only these cells (default: every archived one). Returns the restored keys.
    """
    restored = []
    for key in archived_keys(results_dir):
        target = out / key
        if (keys is None or key in keys) and not target.exists():
            partial = target.with_name(f".{target.name}.restoring")
            shutil.rmtree(partial, ignore_errors=True)  # left by a killed restore
            _copy_cell(results_dir / ARCHIVE / key, partial)
            os.replace(partial, target)
            restored.append(key)
    return restored

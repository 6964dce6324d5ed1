"""`dmesr experiment GRID.yaml`: run every cell of a grid, then write the report."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dmesr.experiment.cells import (
    Cell,
    expand,
    finished_status,
    parse_only,
    select,
    threads_per_worker,
    validate,
)
from dmesr.experiment.config import GridConfig, load_grid, split_overrides
from dmesr.experiment.runner import CellResult, record_failure, run_cells
from dmesr.io import provenance, read_json, write_json
from dmesr.report.archive import ARCHIVE, archived_keys, restore_runs
from dmesr.report.collect import META_NAME


def _command(grid_file: str, workers: int | None, only: tuple[str, ...], dry_run: bool,
             no_report: bool, rerun_stale: bool, overrides: tuple[str, ...]) -> str:
    argv = ["dmesr", "experiment", grid_file]
    argv += ["--workers", str(workers)] if workers else []
    for spec in only:
        argv += ["--only", spec]
    argv += ["--dry-run"] if dry_run else []
    argv += ["--no-report"] if no_report else []
    argv += ["--rerun-stale"] if rerun_stale else []
    return shlex.join([*argv, *overrides])


def _write_meta(grid: GridConfig, command: str, cells: list[Cell],
                results: dict[str, dict[str, Any]], threads: int) -> None:
    """<out>/experiment.json: the grid, every command run on it so far and every cell's
    state (cells outside this invocation's --only keep their earlier record)."""
    path = grid.out_dir() / META_NAME
    old = read_json(path) if path.is_file() else {}
    old_cells = {c["key"]: c for c in old.get("cells", [])}
    commands = [c for c in old.get("commands", []) if c != command] + [command]

    def state(c: Cell) -> dict[str, Any]:
        if c.key in results:
            return results[c.key]
        if not c.is_done() and old_cells.get(c.key, {}).get("status") == "failed":
            return {k: v for k, v in old_cells[c.key].items() if k not in _CELL_FIXED}
        return {"status": c.status()}

    write_json(path, provenance(
        command=command, commands=commands, cwd=os.getcwd(), python=sys.executable,
        grid=grid.model_dump(mode="json"), results_dir=str(grid.results_path()),
        workers=grid.workers, threads_per_worker=threads,
        cells=[{"key": c.key, "ablation": c.ablation, "out": str(c.out),
                "command": shlex.join(c.argv(threads)), **state(c)} for c in cells],
    ))


_CELL_FIXED = ("key", "ablation", "out", "command")


def _dry_run(cells: list[Cell], threads: int, archived: set[str]) -> None:
    for c in cells:
        error = validate(c)
        state, why = (c.status(), None) if error or not c.is_done() else finished_status(c)
        state = "INVALID" if error else state
        if state == "todo" and c.key in archived and not c.out.exists():
            state = "archived"  # restored, not rerun, by a real run
        click.echo(f"{state:8s} {c.key}" + (f"  ({why})" if state == "continue" else ""))
        detail = error or (why if state == "stale" else shlex.join(c.argv(threads)))
        click.echo(f"         {detail}")


def set_aside(cell: Cell) -> Path:
    """Rename a stale cell's folder to `seed<N>.stale-<time>` (reports skip it) so that
    the cell can run again without losing the old run."""
    target = cell.out.with_name(f"{cell.out.name}.stale-{time.strftime('%Y%m%dT%H%M%S')}")
    cell.out.rename(target)
    return target


def _plan(cells: list[Cell], rerun_stale: bool = False,
          echo: Callable[[str], None] = click.echo) -> tuple[list[Cell], dict[str, CellResult]]:
    """Cells to run; finished or invalid cells are settled without launching anything,
    except finished ones that go on under a larger patience or epoch count, and stale
    ones when `rerun_stale` (their folder is set aside, not deleted)."""
    todo, settled = [], {}
    for c in cells:
        if c.is_done():
            status, why = finished_status(c)
            if status == "stale" and rerun_stale:
                echo(f"stale  {c.key}: {why}; set aside as {set_aside(c).name}, rerunning")
                todo.append(c)
            elif status == "continue":
                todo.append(c)
            else:
                settled[c.key] = CellResult(c.key, "stale" if why else "skipped", error=why)
        elif error := validate(c):
            settled[c.key] = record_failure(c, error)
        else:
            todo.append(c)
    return todo, settled


@click.command()
@click.argument("grid_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--workers", type=int, default=None, help="parallel cells (default: the grid's)")
@click.option("--only", multiple=True, help="run only matching cells, e.g. "
              "backbone=sasrec,variant=dmesr* (globs; repeat for OR)")
@click.option("--dry-run", is_flag=True, help="list cells, their status and commands")
@click.option("--no-report", is_flag=True, help="do not write the report afterwards")
@click.option("--no-progress", is_flag=True, help="no progress bar (logs, CI)")
@click.option("--rerun-stale", is_flag=True, help="train stale cells again (their folder is "
              "renamed to seed<N>.stale-<time>) instead of keeping them")
@click.argument("overrides", nargs=-1)
def experiment(grid_file: str, workers: int | None, only: tuple[str, ...], dry_run: bool,
               no_report: bool, no_progress: bool, rerun_stale: bool,
               overrides: tuple[str, ...]) -> None:
    """Run a grid of backbone × variant × seed cells (resumable) and report the results.

    OVERRIDES: run settings for every cell (train.epochs=5, dataset.paths.prepared=…)
    or grid settings (seeds=[1,2], out=runs/x, results_dir=…). Finished cells (with
    metrics.json) are skipped, or go on when only a larger patience/epochs asks for
    more; interrupted ones resume from their last checkpoint; stale ones (edited since,
    or over other feature files) are kept and flagged, or rerun with --rerun-stale.
    """
    grid_over, run_over = split_overrides(list(overrides))
    grid = load_grid(grid_file, grid_over)
    n_workers = workers or grid.workers
    grid = grid.model_copy(update={"workers": n_workers})
    threads = grid.threads or threads_per_worker(n_workers)
    all_cells = expand(grid, run_over)
    cells = select(all_cells, parse_only(only))
    if dry_run:
        _dry_run(cells, threads, set(archived_keys(grid.results_path())))
        return
    command = _command(grid_file, workers, only, dry_run, no_report, rerun_stale, overrides)
    restored = restore_runs(grid.results_path(), grid.out_dir(), [c.key for c in all_cells])
    if restored:
        click.echo(f"restored {len(restored)} finished cells from "
                   f"{grid.results_path() / ARCHIVE} (not rerun)")
    todo, settled = _plan(cells, rerun_stale)
    results = {k: r.as_dict() for k, r in settled.items()}
    _write_meta(grid, command, all_cells, results, threads)
    click.echo(f"{len(cells)} cells: {len(todo)} to run "
               f"({sum(c.status() == 'resume' for c in todo)} resuming, "
               f"{sum(c.is_done() for c in todo)} going on under a larger patience/epochs), "
               f"{sum(r.status in ('skipped', 'stale') for r in settled.values())} finished, "
               f"{sum(r.status == 'failed' for r in settled.values())} invalid; "
               f"{n_workers} workers × {threads} threads")
    # SIGTERM arrives as KeyboardInterrupt (dmesr.cli.main): running cells are terminated
    # instead of being orphaned; each resumes from its checkpoint next time.
    for res in run_cells(todo, n_workers, threads, progress=not no_progress, echo=click.echo):
        results[res.key] = res.as_dict()
    _write_meta(grid, command, all_cells, results, threads)
    _summary(results)
    if not no_report:
        from dmesr.errors import DmesrError
        from dmesr.report.build import write_report

        try:
            folder = write_report(grid.out_dir(), grid.results_path())
            click.echo(f"report: {folder / 'results.md'}")
        except DmesrError as exc:  # e.g. every cell failed: nothing to report
            click.echo(f"no report: {exc}", err=True)
    if any(r["status"] == "failed" for r in results.values()):
        sys.exit(1)


def _summary(results: dict[str, dict[str, Any]]) -> None:
    failed = {k: r for k, r in results.items() if r["status"] == "failed"}
    for key, r in results.items():
        if r["status"] == "stale":
            click.echo(f"warning: {key} is stale: {r.get('error', 'changed')} "
                       "(kept; --rerun-stale trains it again)", err=True)
    for key, r in failed.items():
        click.echo(f"FAILED {key}: {r.get('error', '')} (log: {r.get('log')})", err=True)
    done = sum(r["status"] == "done" for r in results.values())
    busy = sum(r["status"] == "busy" for r in results.values())
    click.echo(f"{done} run, {len(results) - done - len(failed) - busy} already finished, "
               f"{busy} running in another process, {len(failed)} failed")

"""`dmesr report OUT`: tables, p-values and plots from an experiment's run directories."""

from __future__ import annotations

import shlex
from pathlib import Path

import click


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="where to write (default: the grid's results_dir, else results/<dataset>)")
@click.option("--no-plots", is_flag=True, help="tables only (no matplotlib)")
def report(out: Path, results_dir: Path | None, no_plots: bool) -> None:
    """Write results.csv, results.md and plots for the runs under OUT (resumable grids:
    run it any time; only finished cells are included)."""
    from dmesr.report.build import write_report

    argv = ["dmesr", "report", str(out)]
    if results_dir:
        argv += ["--results-dir", str(results_dir)]
    if no_plots:
        argv.append("--no-plots")
    folder = write_report(out, results_dir, shlex.join(argv), plots=not no_plots)
    click.echo(f"wrote {folder}/results.md, results.csv"
               + ("" if no_plots else " and plots"))

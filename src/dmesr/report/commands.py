"""`dmesr report OUT`: tables, p-values and plots from an experiment's run directories."""

from __future__ import annotations

import shlex
from pathlib import Path

import click


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path),
                required=False)
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="where to write (default: the grid's results_dir, else results/<dataset>)")
@click.option("--no-plots", is_flag=True, help="tables only (no matplotlib)")
@click.option("--replace", is_flag=True,
              help="overwrite a results.csv that lists runs this report would not contain")
@click.option("--headline", "headline", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="instead: print one test NDCG@10 table across these results folders")
def report(out: Path | None, results_dir: Path | None, no_plots: bool, replace: bool,
           headline: tuple[Path, ...]) -> None:
    """Write results.csv, results.md and plots for the runs under OUT (resumable grids:
    run it any time; only finished cells are included)."""
    if headline:
        from dmesr.report.headline import headline_table

        click.echo(headline_table(list(headline)))
        return
    if out is None:
        raise click.UsageError("give the experiment's run folder OUT (or --headline DIR ...)")
    from dmesr.report.build import write_report

    argv = ["dmesr", "report", str(out)]
    if results_dir:
        argv += ["--results-dir", str(results_dir)]
    if no_plots:
        argv.append("--no-plots")
    if replace:
        argv.append("--replace")
    folder = write_report(out, results_dir, shlex.join(argv), plots=not no_plots,
                          replace=replace)
    click.echo(f"wrote {folder}/results.md, results.csv"
               + ("" if no_plots else " and plots"))

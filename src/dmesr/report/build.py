"""Write an experiment's results (results.csv, results.md, significance.json, PNGs)."""

from __future__ import annotations

from pathlib import Path

from dmesr.io import atomic_path, write_json
from dmesr.report.collect import Experiment, load_experiment, results_frame
from dmesr.report.significance import METHOD, all_tests


def default_results_dir(exp: Experiment) -> Path:
    value = exp.meta.get("results_dir")
    return Path(value) if value else Path("results") / exp.dataset()


def write_report(out: Path, results_dir: Path | None = None, command: str | None = None,
                 plots: bool = True) -> Path:
    """Rebuild everything from the run directories under `out`; returns results_dir.

    `command`: the `dmesr report …` line to record; None when `dmesr experiment` calls it.
    """
    from dmesr.report.tables import results_markdown

    exp = load_experiment(out)
    folder = Path(results_dir) if results_dir else default_results_dir(exp)
    folder.mkdir(parents=True, exist_ok=True)
    df = results_frame(exp)
    with atomic_path(folder / "results.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    tests = all_tests(exp)
    write_json(folder / "significance.json", {"method": METHOD, "tests": [
        {"backbone": b, **t.__dict__} for (b, _, _), t in tests.items()]})
    names = []
    if plots:
        from dmesr.report.plots import write_plots

        names = write_plots(exp, df, folder)
    md = results_markdown(exp, df, tests, command, names)
    with atomic_path(folder / "results.md") as tmp:
        tmp.write_text(md)
    return folder

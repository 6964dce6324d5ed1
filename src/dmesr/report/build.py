"""Write an experiment's results (results.csv, results.md, significance.json, PNGs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dmesr.errors import DmesrError
from dmesr.io import atomic_path, write_json
from dmesr.report.archive import ARCHIVE, archive_runs
from dmesr.report.collect import Experiment, load_experiment, results_frame
from dmesr.report.significance import METHOD, all_tests


def default_results_dir(exp: Experiment) -> Path:
    value = exp.meta.get("results_dir")
    return Path(value) if value else Path("results") / exp.dataset()


def write_report(out: Path, results_dir: Path | None = None, command: str | None = None,
                 plots: bool = True, replace: bool = False) -> Path:
    """Rebuild everything from the run directories under `out`; returns results_dir.

    Also archives each run's small files under `<results_dir>/runs/` (report/archive.py),
    first: a report that refuses to shrink the table still keeps the new cells.

    `command`: the `dmesr report …` line to record; None when `dmesr experiment` calls it.
    `replace`: overwrite a results.csv that lists runs this report would not contain.
    """
    from dmesr.report.tables import results_markdown

    exp = load_experiment(out)
    folder = Path(results_dir) if results_dir else default_results_dir(exp)
    folder.mkdir(parents=True, exist_ok=True)
    df = results_frame(exp)
    archive_runs([(f"{r.backbone}/{r.variant}/seed{r.seed}", r.path) for r in exp.runs], folder)
    if not replace:
        _refuse_to_drop_runs(folder / "results.csv", df)
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


def _refuse_to_drop_runs(existing: Path, df: pd.DataFrame) -> None:
    """A published table is not silently shrunk by a report over fewer runs (e.g. a fresh
    run folder whose results predate the archive)."""
    if not existing.is_file():
        return
    key = ["backbone", "variant", "seed"]
    old = pd.read_csv(existing, usecols=key)
    new = set(map(tuple, df[key].astype(str).to_numpy()))
    lost = sorted({tuple(r) for r in old.astype(str).to_numpy()} - new)
    if lost:
        shown = ", ".join("/".join(k[:2]) + f"/seed{k[2]}" for k in lost[:4])
        raise DmesrError(
            f"{existing} lists {len(lost)} runs that this report would drop ({shown}"
            f"{', …' if len(lost) > 4 else ''}): the run folder does not hold them. Its "
            f"{len(df)} finished runs are archived all the same in {existing.parent / ARCHIVE}, "
            "which `dmesr experiment` restores first; rerun the others, or pass --replace to "
            "write the smaller table")

"""End to end: a tiny grid on the tiny dataset, with a failing and an invalid cell, then
the report (CSV, Markdown with bold and p-values, PNGs) and its rebuild from run dirs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dmesr.experiment.commands import experiment
from dmesr.report.archive import archived_keys
from dmesr.report.commands import report

GRID = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "grid_tiny.yaml"
COLUMNS = ["dataset", "backbone", "variant", "seed", "valid_full_NDCG@10", "test_full_NDCG@10",
           "test_full_HR@10", "test_sampled_NDCG@10", "test_sampled_HR@10", "test_full_HR@5",
           "test_full_NDCG@20", "test_full_MRR@10", "test_full_tail_user_NDCG@10",
           "test_full_head_item_NDCG@10", "s_per_epoch", "time_to_best_s", "best_epoch",
           "peak_rss_mb"]


def _only(*specs: str) -> list[str]:
    return [arg for s in specs for arg in ("--only", s)]


VARIANTS = ["variants.crash=[eval.select_metric=NOPE@10]", "variants.invalid=[model.hidden=-1]"]


@pytest.fixture(scope="module")
def grid_run(tiny_dataset, tmp_path_factory) -> tuple[Path, Path, object]:
    """sasrec × {id, drop5} × seeds {1, 2}, plus a cell that crashes while training
    (unknown selection metric) and one whose configuration is invalid."""
    root = tmp_path_factory.mktemp("grid")
    args = [str(GRID), "--workers", "2", "--no-progress",
            *_only("backbone=sasrec,variant=id", "backbone=sasrec,variant=drop5",
                   "backbone=sasrec,variant=crash,seed=1",
                   "backbone=sasrec,variant=invalid,seed=1"),
            f"out={root / 'runs'}", f"results_dir={root / 'results'}",
            *VARIANTS,
            f"dataset.paths.prepared={tiny_dataset.root}"]
    res = CliRunner().invoke(experiment, args, catch_exceptions=False)
    return root / "runs", root / "results", res


def test_failed_cells_are_reported_and_do_not_block_others(grid_run) -> None:
    out, results, res = grid_run
    assert res.exit_code == 1, res.output
    assert "FAILED sasrec/crash/seed1" in res.output and "FAILED sasrec/invalid/seed1" in res.output
    meta = json.loads((out / "experiment.json").read_text())
    cells = {c["key"]: c for c in meta["cells"]}
    assert len(cells) == 2 * (2 * 4 + 1)  # the whole grid is recorded, --only or not
    assert sum(c["status"] == "todo" for c in cells.values()) == len(cells) - 6
    for key in ("sasrec/crash/seed1", "sasrec/invalid/seed1"):
        assert cells[key]["status"] == "failed" and Path(cells[key]["log"]).is_file()
    assert "NOPE@10" in Path(cells["sasrec/crash/seed1"]["log"]).read_text()
    assert "hidden" in Path(cells["sasrec/invalid/seed1"]["log"]).read_text()
    assert sum(c["status"] == "done" for c in cells.values()) == 4
    md = (results / "results.md").read_text()
    assert "sasrec/crash/seed1" in md and "experiment.log" in md


def test_results_csv_md_and_plots(grid_run) -> None:
    _, results, _ = grid_run
    df = pd.read_csv(results / "results.csv")
    assert list(df.columns[:4]) == ["dataset", "backbone", "variant", "seed"]
    assert set(COLUMNS) <= set(df.columns)
    assert len(df) == 4 and set(df.variant) == {"id", "drop5"} and set(df.seed) == {1, 2}
    assert (df.dataset == "tiny").all() and (df.kind == "main").all()
    assert df["test_full_NDCG@10"].between(0, 1).all()
    md = (results / "results.md").read_text()
    assert "dmesr experiment" in md and "grid_tiny.yaml" in md  # the exact command
    assert "pessimistically" in md and "Wilcoxon" in md  # protocol and test stated
    assert "**" in md and "±" in md
    assert "p vs id" in md and "tail users" in md
    row = next(line for line in md.splitlines() if line.startswith("| drop5 |"))
    p_cell = row.split("|")[-5].strip()  # p vs id, before the three timing columns
    assert p_cell[0].isdigit(), row
    for name in ("bars_test_full.png", "bars_test_sampled.png", "groups_test_full.png",
                 "valid_curves.png"):
        png = results / name
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG", name
    sig = json.loads((results / "significance.json").read_text())
    assert {t["variant"] for t in sig["tests"]} == {"drop5"}
    assert all(0 <= t["p"] <= 1 and t["n_users"] == 40 for t in sig["tests"])


def test_report_is_rebuilt_from_run_dirs_alone(grid_run, tmp_path) -> None:
    out, results, _ = grid_run
    res = CliRunner().invoke(report, [str(out), "--results-dir", str(tmp_path / "again")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again" / "results.csv").read_text() == (
        results / "results.csv").read_text()

    def body(p: Path) -> list[str]:
        return [x for x in p.read_text().splitlines() if not x.startswith("Report written by")]

    assert body(tmp_path / "again" / "results.md") == body(results / "results.md")
    # without experiment.json (just the run directories) the numbers are the same
    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("experiment.json"))
    res = CliRunner().invoke(report, [str(bare), "--results-dir", str(tmp_path / "bare_res"),
                                      "--no-plots"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    a = pd.read_csv(results / "results.csv").drop(columns=["kind"])
    b = pd.read_csv(tmp_path / "bare_res" / "results.csv").drop(columns=["kind"])
    key = ["backbone", "variant", "seed"]
    pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True),
                                  b.sort_values(key).reset_index(drop=True))


def test_rerun_skips_finished_cells(grid_run, tiny_dataset) -> None:
    out, results, _ = grid_run
    before = (out / "sasrec" / "id" / "seed1" / "metrics.json").stat().st_mtime_ns
    res = CliRunner().invoke(experiment, [
        str(GRID), "--no-progress", "--no-report", *_only("backbone=sasrec,variant=id"),
        f"out={out}", f"results_dir={results}", f"dataset.paths.prepared={tiny_dataset.root}",
        *VARIANTS], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "0 to run" in res.output and "2 finished" in res.output
    assert (out / "sasrec" / "id" / "seed1" / "metrics.json").stat().st_mtime_ns == before
    meta = json.loads((out / "experiment.json").read_text())
    assert len(meta["commands"]) == 2  # both invocations are recorded
    # cells outside --only keep their record: the crashed one is still listed as failed
    assert {c["key"]: c["status"] for c in meta["cells"]}["sasrec/crash/seed1"] == "failed"
    # a finished cell whose settings changed since is kept, but flagged
    res = CliRunner().invoke(experiment, [
        str(GRID), "--no-progress", "--no-report", *_only("backbone=sasrec,variant=id,seed=1"),
        f"out={out}", f"results_dir={results}", f"dataset.paths.prepared={tiny_dataset.root}",
        "train.lr=0.5"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "is stale: its configuration differs" in res.output, res.output


def test_report_archives_cells_and_a_fresh_run_folder_restores_them(grid_run, tiny_dataset,
                                                                     tmp_path) -> None:
    _, results, _ = grid_run
    cell = results / "runs" / "sasrec" / "drop5" / "seed2"
    kept = sorted(str(p.relative_to(cell)) for p in cell.rglob("*") if p.is_file())
    assert kept == ["config.yaml", "log.jsonl", "metrics.json", "per_user/columns.json",
                    "per_user/test.full.ranks.npy", "run.json"]  # no checkpoints
    assert not (results / "runs" / "sasrec" / "crash").exists()  # only finished cells
    # a new machine: the committed results folder, no run folder
    published = Path(shutil.copytree(results, tmp_path / "results"))
    fresh = tmp_path / "runs"
    res = CliRunner().invoke(experiment, [
        str(GRID), "--no-progress", *_only("backbone=sasrec,variant=id"), f"out={fresh}",
        f"results_dir={published}", f"dataset.paths.prepared={tiny_dataset.root}",
        *VARIANTS], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "restored 4 finished cells" in res.output and "0 to run" in res.output
    assert not (fresh / "sasrec" / "id" / "seed1" / "checkpoints").exists()
    # the report of the restored cells has the same rows and the same p-values
    pd.testing.assert_frame_equal(pd.read_csv(published / "results.csv"),
                                  pd.read_csv(results / "results.csv"))
    sig = json.loads((published / "significance.json").read_text())["tests"]
    assert sig == json.loads((results / "significance.json").read_text())["tests"]
    # a dry run on another fresh folder says which cells would come from the archive
    res = CliRunner().invoke(experiment, [
        str(GRID), "--dry-run", *_only("backbone=sasrec,variant=id,seed=1"),
        f"out={tmp_path / 'other'}", f"results_dir={published}",
        f"dataset.paths.prepared={tiny_dataset.root}", *VARIANTS], catch_exceptions=False)
    assert res.output.startswith("archived sasrec/id/seed1"), res.output


def test_report_refuses_to_shrink_a_published_table(grid_run, tmp_path) -> None:
    out, results, _ = grid_run
    published = Path(shutil.copytree(results, tmp_path / "results",
                                     ignore=shutil.ignore_patterns("runs")))  # no archive
    partial = tmp_path / "partial"
    shutil.copytree(out / "sasrec" / "id", partial / "sasrec" / "id")  # 2 of the 4 runs
    before = (published / "results.csv").read_text()
    res = CliRunner().invoke(report, [str(partial), "--results-dir", str(published),
                                      "--no-plots"])
    assert res.exit_code != 0  # DmesrError: dmesr.cli.main prints it as "error: …"
    assert "2 runs that this report would drop (sasrec/drop5/seed1" in str(res.exception)
    assert (published / "results.csv").read_text() == before
    # ... but the cells it holds are archived all the same: nothing run is lost
    assert archived_keys(published) == ["sasrec/id/seed1", "sasrec/id/seed2"]
    res = CliRunner().invoke(report, [str(partial), "--results-dir", str(published),
                                      "--no-plots", "--replace"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(published / "results.csv")) == 2

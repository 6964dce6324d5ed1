"""compare_recbole.py's cache lookup and aggregation (no RecBole needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from compare_recbole import aggregate, budget_of, cached_run, markdown_table, restore_published


def _write(work: Path, name: str, ndcg: float) -> Path:
    path = work / name
    path.write_text(json.dumps({"system": "recbole", "model": "SASRec", "test_full_NDCG@10": ndcg}))
    return path


def test_cached_run_prefers_the_asked_budget(tmp_path: Path) -> None:
    _write(tmp_path, "recbole_SASRec_seed2026_b6.0.json", 0.03)
    asked = _write(tmp_path, "recbole_SASRec_seed2026_b140.0.json", 0.07)
    assert cached_run(tmp_path, "recbole", "SASRec", 2026, 140.0) == asked


def test_cached_run_falls_back_to_the_longest_budget(tmp_path: Path) -> None:
    _write(tmp_path, "recbole_SASRec_seed2026_b6.0.json", 0.03)
    longest = _write(tmp_path, "recbole_SASRec_seed2026_b60.0.json", 0.05)
    _write(tmp_path, "recbole_SASRec_seed2027_b600.0.json", 0.09)  # another seed
    assert cached_run(tmp_path, "recbole", "SASRec", 2026, 140.0) == longest
    assert budget_of(longest) == 60.0
    assert cached_run(tmp_path, "recbole", "GRU4Rec", 2026, 140.0) is None


def test_aggregate_reports_every_budget_used() -> None:
    runs = [{"system": "dmesr", "model": "SASRec", "budget_minutes": b, "stopped": s,
             **{k: v for k in ("test_full_NDCG@10", "test_full_HR@10", "valid_full_NDCG@10",
                               "s_per_epoch", "epochs", "best_epoch", "time_to_best_s",
                               "peak_rss_mb")}}
            for b, s, v in [(6.0, "time budget (6.0 min)", 1.0), (140.0, "early stopping", 3.0)]]
    row = aggregate(runs)
    assert row["seeds"] == 2
    assert row["test_full_NDCG@10"] == pytest.approx(2.0)
    assert row["test_full_NDCG@10_std"] == pytest.approx(2 ** 0.5)
    assert row["budget_minutes"] == [6.0, 140.0]
    assert row["stopped"] == ["early stopping ×1", "time budget (6.0 min) ×1"]
    # runs cached before the worker told early stopping from max epochs count as one reason
    for run, why in zip(runs, ["early stopping or max epochs", "early stopping"], strict=True):
        run["stopped"] = why
    assert aggregate(runs)["stopped"] == ["early stopping ×2"]
    assert aggregate(runs[:1])["stopped"] == ["early stopping"]


def test_markdown_table_row() -> None:
    row = {"system": "recbole", "model": "GRU4Rec", "seeds": 2, "budget_minutes": [140.0],
           "stopped": ["early stopping ×2"], "s_per_epoch": 66.6, "epochs": 45.5,
           "best_epoch": 34.5, "time_to_best_s": 2376.0, "peak_rss_mb": 1557.2,
           "test_full_NDCG@10": 0.0618, "test_full_NDCG@10_std": 0.0075,
           "test_full_HR@10": 0.1256, "test_full_HR@10_std": 0.0142}
    lines = markdown_table([row]).splitlines()
    assert len(lines) == 3 and lines[0].count("|") == lines[2].count("|")
    assert lines[2] == ("| RecBole | GRU4Rec | 2 | 0.0618 ± 0.0075 | 0.1256 ± 0.0142 | 66.6 "
                        "| 45.5 (34.5) | 39.6 min | 1,557 MB | 140 min | early stopping ×2 |")


def test_published_runs_are_restored_without_overwriting(tmp_path: Path) -> None:
    published = tmp_path / "compare_recbole.json"
    runs = [{"system": "recbole", "model": "SASRec", "seed": 2026, "budget_minutes": 140.0,
             "test_full_NDCG@10": 0.0628},
            {"system": "dmesr", "model": "GRU4Rec", "seed": 2027, "budget_minutes": 6.0,
             "test_full_NDCG@10": 0.08}]
    published.write_text(json.dumps({"rows": [], "runs": runs}))
    work = tmp_path / "work"
    work.mkdir()
    local = _write(work, "recbole_SASRec_seed2026_b140.0.json", 0.07)
    assert restore_published(published, work) == 1  # the local file wins
    assert json.loads(local.read_text())["test_full_NDCG@10"] == 0.07
    found = cached_run(work, "dmesr", "GRU4Rec", 2027, 140.0)
    assert found is not None and budget_of(found) == 6.0
    assert json.loads(found.read_text()) == runs[1]
    assert restore_published(tmp_path / "absent.json", work) == 0


def test_a_rerun_without_notes_keeps_the_published_ones(tmp_path: Path) -> None:
    from compare_recbole import kept_notes

    out = tmp_path / "compare.json"
    assert kept_notes(out) == []
    out.write_text(json.dumps({"notes": ["budget-bound"], "rows": []}))
    assert kept_notes(out) == ["budget-bound"]
    out.write_text("{not json")
    assert kept_notes(out) == []

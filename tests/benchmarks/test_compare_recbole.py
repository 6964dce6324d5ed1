"""compare_recbole.py's cache lookup and aggregation (no RecBole needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from compare_recbole import aggregate, budget_of, cached_run


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
    assert row["stopped"] == ["early stopping", "time budget (6.0 min)"]

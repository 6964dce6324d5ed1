"""Seed aggregation and paired per-user significance tests on hand-made runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dmesr.errors import ArtifactMismatchError
from dmesr.eval.compare import aggregate, paired_tests
from dmesr.eval.metrics import metric_names, per_user_metrics
from dmesr.io import save_npy, write_json


def fake_run(root: Path, ranks: np.ndarray, metrics: dict, data_hash: str = "h") -> Path:
    names = metric_names([5, 10, 20], 10)
    per_user = per_user_metrics(ranks, [5, 10, 20], 10)
    save_npy(root / "per_user" / "test.full.metrics.npy", np.stack([per_user[n] for n in names], 1))
    write_json(root / "per_user" / "columns.json", {"metrics": names})
    write_json(root / "run.json", {"dataset": {"content_hash": data_hash}})
    write_json(root / "metrics.json", metrics)
    return root


def test_aggregate_mean_and_sample_std(tmp_path) -> None:
    runs = [fake_run(tmp_path / str(i), np.ones(3), {"test.full.NDCG@10": v, "stopped": "x"})
            for i, v in enumerate([0.1, 0.2, 0.3])]
    agg = aggregate(runs)
    assert agg["test.full.NDCG@10"]["mean"] == pytest.approx(0.2)
    assert agg["test.full.NDCG@10"]["std"] == pytest.approx(0.1)
    assert "stopped" not in agg


def test_paired_tests_match_scipy_and_check_dataset(tmp_path) -> None:
    rng = np.random.default_rng(0)
    a_ranks = rng.integers(1, 30, 200)
    b_ranks = a_ranks + rng.integers(0, 10, 200)  # the baseline is worse or equal
    a = fake_run(tmp_path / "a", a_ranks, {})
    b = fake_run(tmp_path / "b", b_ranks, {})
    res = paired_tests(a, b)["NDCG@10"]
    x = per_user_metrics(a_ranks, [10], 10)["NDCG@10"]
    y = per_user_metrics(b_ranks, [10], 10)["NDCG@10"]
    assert res["diff"] == pytest.approx((x - y).mean()) and res["diff"] > 0
    assert res["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x, y).pvalue)
    assert res["ttest_p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert res["wilcoxon_p"] < 0.01
    same = paired_tests(a, a)["HR@10"]
    assert same["wilcoxon_p"] == 1.0 and same["diff"] == 0.0
    other = fake_run(tmp_path / "c", b_ranks, {}, data_hash="other")
    with pytest.raises(ArtifactMismatchError):
        paired_tests(a, other)
    assert json.loads((a / "per_user" / "columns.json").read_text())["metrics"][0] == "HR@5"

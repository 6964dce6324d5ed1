"""patience_replay.py replays the trainer's early-stopping rule on a logged curve."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from dmesr.config import load_config
from dmesr.train.config import RunConfig
from dmesr.train.trainer import Trainer
from patience_replay import best_moving_average, read_run, replay, replay_run, variant_means


def test_replay_counts_ties_as_no_improvement() -> None:
    scores = [0.1, 0.3, 0.3, 0.2, 0.4, 0.1, 0.1, 0.1]
    assert replay(scores, 2) == (3, 1, 0.3, True)   # the tie at index 2 is a bad evaluation
    assert replay(scores, 3) == (7, 4, 0.4, True)
    assert replay(scores, 9) == (7, 4, 0.4, False)  # the curve ends first


def test_moving_average_tells_a_lucky_spike_from_a_plateau() -> None:
    spike = [0.1, 0.1, 0.5, 0.1, 0.1]
    plateau = [0.1, 0.3, 0.3, 0.3, 0.1]
    assert max(spike) > max(plateau)
    assert best_moving_average(spike, 3) == pytest.approx(0.7 / 3)
    assert best_moving_average(plateau, 3) == pytest.approx(0.3)
    assert best_moving_average(plateau, 6) is None  # shorter than the window


def test_variant_means_group_runs_by_their_parent_folder() -> None:
    runs = {Path("g/sasrec/a/seed1"): (0.2, 0.1), Path("g/sasrec/a/seed2"): (0.4, 0.3),
            Path("g/sasrec/b/seed1"): (0.5, None)}
    means = variant_means(runs)
    assert means["sasrec/a"] == {"runs": 2, "best_valid": pytest.approx(0.3),
                                 "best_moving_average": pytest.approx(0.2)}
    assert means["sasrec/b"]["best_moving_average"] is None


def _fit(dataset, out: Path, patience: int) -> dict:
    """Twelve epochs at a learning rate high enough that validation falls after a few."""
    overrides = [f"dataset.paths.prepared={dataset.root}", "model.hidden=16", "model.inner=32",
                 "model.max_len=10", "train.threads=1", "train.progress=false",
                 "train.batch_size=8", "train.epochs=12", f"train.patience={patience}",
                 "train.lr=0.5", "model.loss=bce", "model.n_neg=2"]
    return Trainer(load_config(RunConfig, [], overrides), dataset, out).fit()


def test_replay_of_a_long_patience_run_matches_a_short_patience_run(tiny_dataset, tmp_path) -> None:
    # same seed: the patience-2 run follows the patience-40 run's curve until it stops
    long = _fit(tiny_dataset, tmp_path / "long", patience=40)
    short = _fit(tiny_dataset, tmp_path / "short", patience=2)
    assert short["train.epochs"] < long["train.epochs"] == 12
    replayed = replay_run(read_run(tmp_path / "long"), [2, 40])
    assert replayed[2]["stop_epoch"] == short["train.epochs"]
    assert replayed[2]["best_epoch"] == short["train.best_epoch"]
    assert replayed[2]["valid_NDCG@10"] == pytest.approx(short["valid.full.NDCG@10"])
    # the short run cannot say what a longer patience would have done
    assert replay_run(read_run(tmp_path / "short"), [40])[40] is None

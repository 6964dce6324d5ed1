"""A stopped run goes on when only its stopping rule grew (patience, epochs), and the
continued run is the one the larger rule asks for, bit for bit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from dmesr.errors import ConfigError
from dmesr.experiment.cells import Cell, finished_status
from dmesr.experiment.commands import _plan
from dmesr.io import read_json
from dmesr.train.trainer import Trainer, per_epoch_losses
from train.test_trainer import run_config

# a huge learning rate makes validation worse after the first epochs: early stopping
STOPS_EARLY = {"epochs": 40, "lr": 0.5}


def _fit(ds, out: Path, **train: object) -> dict:
    return Trainer(run_config(ds.root, **{**STOPS_EARLY, **train}), ds, out).fit()


def _cell(ds, out: Path, **train: object) -> Cell:
    cfg = run_config(ds.root, **{**STOPS_EARLY, **train})
    overrides = [f"train.{k}={v}" for k, v in cfg.train.model_dump().items()
                 if k in ("epochs", "lr", "patience")]
    return Cell("sasrec", "id", 2026, False, (), (*_base_overrides(ds), *overrides), out)


def _base_overrides(ds) -> tuple[str, ...]:
    return (f"dataset.paths.prepared={ds.root}", "model.hidden=16", "model.inner=32",
            "model.max_len=10", "train.threads=1", "train.progress=false",
            "train.batch_size=8", "model.loss=bce", "model.n_neg=2")


@pytest.fixture(scope="module")
def stopped_and_reference(tiny_dataset, tmp_path_factory) -> tuple[Path, Path, dict]:
    """A run stopped early with patience 2 and an uninterrupted run with patience 5."""
    root = tmp_path_factory.mktemp("continuation")
    first = _fit(tiny_dataset, root / "p2", patience=2)
    assert first["train.epochs"] < 40  # it did stop early
    reference = _fit(tiny_dataset, root / "p5", patience=5)
    assert reference["train.epochs"] > first["train.epochs"]
    return root / "p2", root / "p5", reference


def test_a_larger_patience_continues_the_stopped_run_bit_exactly(
        stopped_and_reference, tiny_dataset, tmp_path) -> None:
    stopped, ref_dir, reference = stopped_and_reference
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    stopped_epochs = read_json(out / "metrics.json")["train.epochs"]
    continued = _fit(tiny_dataset, out, patience=5)
    assert np.array_equal(per_epoch_losses(out), per_epoch_losses(ref_dir))
    ref_w = load_file(ref_dir / "checkpoints" / "best.safetensors")
    res_w = load_file(out / "checkpoints" / "best.safetensors")
    assert all((ref_w[k] == res_w[k]).all() for k in ref_w)
    for key in ("valid.full.NDCG@10", "test.full.NDCG@10", "train.epochs", "train.best_epoch"):
        assert continued[key] == reference[key], key
    # the record says what happened; the stopped run's metrics are kept beside
    record = read_json(out / "run.json")
    assert record["continued"][0]["from_epoch"] == stopped_epochs
    assert record["continued"][0]["changed"] == {"train.patience": [2, 5]}
    assert record["comparable_config"]["train"]["patience"] == 5
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["patience"] == 5
    old = read_json(out / f"metrics.epoch{stopped_epochs}.json")
    assert old["train.epochs"] == stopped_epochs and old["stopped"] == "early stopping"


def test_a_smaller_patience_is_another_run(stopped_and_reference, tiny_dataset, tmp_path) -> None:
    _, ref_dir, _ = stopped_and_reference
    out = tmp_path / "run"
    shutil.copytree(ref_dir, out)
    with pytest.raises(ConfigError, match="different configuration"):
        _fit(tiny_dataset, out, patience=2)


def test_grid_cells_go_on_under_a_larger_patience_and_not_otherwise(
        stopped_and_reference, tiny_dataset, tmp_path) -> None:
    stopped, _, _ = stopped_and_reference
    out = tmp_path / "cell"
    shutil.copytree(stopped, out)
    assert finished_status(_cell(tiny_dataset, out, patience=2)) == ("done", None)
    assert finished_status(_cell(tiny_dataset, out, patience=1))[0] == "stale"
    grown = _cell(tiny_dataset, out, patience=5)
    status, why = finished_status(grown)
    assert status == "continue" and "patience=5" in why
    todo, settled = _plan([grown])
    assert todo == [grown] and not settled
    epochs = read_json(out / "metrics.json")["train.epochs"]
    status, why = finished_status(_cell(tiny_dataset, out, patience=2, epochs=epochs - 1))
    assert status == "stale" and "more than epochs" in why
    (out / "checkpoints" / "last.safetensors").unlink()  # an archived copy: no checkpoint
    status, why = finished_status(grown)
    assert status == "stale" and "no last checkpoint" in why


def test_more_epochs_continue_a_run_that_used_all_of_its_own(tiny_dataset, tmp_path) -> None:
    reference = Trainer(run_config(tiny_dataset.root, epochs=4), tiny_dataset,
                        tmp_path / "ref").fit()
    out = tmp_path / "run"
    Trainer(run_config(tiny_dataset.root, epochs=2), tiny_dataset, out).fit()
    cell = Cell("sasrec", "id", 2026, False, (), (*_base_overrides(tiny_dataset),
                "train.epochs=4", "train.patience=50"), out)
    assert finished_status(cell)[0] == "continue"
    continued = Trainer(run_config(tiny_dataset.root, epochs=4), tiny_dataset, out).fit()
    assert continued["test.full.NDCG@10"] == reference["test.full.NDCG@10"]
    assert np.array_equal(per_epoch_losses(out), per_epoch_losses(tmp_path / "ref"))
    # a last epoch validated only because it was the last one cannot be gone past
    sparse = tmp_path / "sparse"
    Trainer(run_config(tiny_dataset.root, epochs=3, eval_every=2), tiny_dataset, sparse).fit()
    with pytest.raises(ConfigError, match="validated only because it was the last"):
        Trainer(run_config(tiny_dataset.root, epochs=4, eval_every=2), tiny_dataset,
                sparse).fit()


def test_the_report_states_each_backbones_patience_and_warns_on_a_mix(
        stopped_and_reference, tiny_dataset, tmp_path) -> None:
    from dmesr.report.collect import Experiment, Run, stopping_rules
    from dmesr.report.tables import stopping_lines

    stopped, _, _ = stopped_and_reference
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    _fit(tiny_dataset, out, patience=5)

    def run(path: Path, seed: int) -> Run:
        return Run("sasrec", "id", seed, path, read_json(path / "metrics.json"))

    lines = stopping_lines(stopping_rules(Experiment(tmp_path, [run(out, 1)], {})))
    assert lines == ["- Early stopping patience (validations without improvement): sasrec 5; "
                     "1 runs went on from an earlier stop under a larger patience or epoch "
                     "count (run.json `continued`; the same runs epoch for epoch)."]
    mixed = stopping_lines(stopping_rules(Experiment(tmp_path, [run(out, 1), run(stopped, 2)],
                                                     {})))
    assert "sasrec 2/5" in mixed[0]
    assert mixed[1].startswith("- **Warning: sasrec runs stopped under different patience**: "
                               "2 (1 runs), 5 (1 runs)")
    # a run that ran out of epochs (not patience) is named: its best may lie beyond the cap
    capped = Run("gru4rec", "dmesr", 3, tmp_path / "capped", {"train.epochs": 4, "stopped": None})
    untrained = Run("sasrec", "pop", 1, tmp_path / "pop", {"train.epochs": 0, "stopped": None})
    unrecorded = Run("sasrec", "id", 4, tmp_path / "old", {"train.epochs": 9})  # no "stopped"
    lines = stopping_lines(stopping_rules(Experiment(
        tmp_path, [run(out, 1), capped, untrained, unrecorded], {})))
    assert lines[-1].startswith("- **Warning: 1 runs ended at their epoch cap or time budget "
                                "with patience left** (gru4rec/dmesr/seed3)")

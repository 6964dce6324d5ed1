"""Trainer: determinism, resume after SIGKILL, early stopping, run directory, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from dmesr.config import load_config
from dmesr.errors import ConfigError, DmesrError
from dmesr.experiment.cells import Cell
from dmesr.experiment.runner import run_cell
from dmesr.io import exclusive, is_locked
from dmesr.train.commands import train, train_run
from dmesr.train.config import RunConfig
from dmesr.train.trainer import Trainer, per_epoch_losses


def run_config(root: Path, **train: object) -> RunConfig:
    overrides = [f"dataset.paths.prepared={root}", "model.hidden=16", "model.inner=32",
                 "model.max_len=10", "train.threads=1", "train.progress=false",
                 "train.batch_size=8", "train.epochs=6", "train.patience=50",
                 "model.loss=bce", "model.n_neg=2"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(RunConfig, [], overrides)


def fit(ds, out: Path, **train: object) -> dict:
    return Trainer(run_config(ds.root, **train), ds, out).fit()


def test_same_seed_same_curve_other_seed_differs(tiny_dataset, tmp_path) -> None:
    a = fit(tiny_dataset, tmp_path / "a", epochs=3)
    b = fit(tiny_dataset, tmp_path / "b", epochs=3)
    fit(tiny_dataset, tmp_path / "c", epochs=3, seed=7)
    la, lb, lc = (per_epoch_losses(tmp_path / x) for x in "abc")
    assert np.array_equal(la, lb) and len(la) == 3
    assert not np.array_equal(la, lc)
    assert a["test.full.NDCG@10"] == b["test.full.NDCG@10"]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from dmesr.data.dataset import PreparedDataset
    from dmesr.train.trainer import Trainer
    sys.path.insert(0, {tests!r})
    from train.test_trainer import run_config
    ds = PreparedDataset({root!r})
    def hook(epoch, step):
        if epoch == 4 and step == 2:  # in the middle of epoch 4, after 3 checkpoints
            os.kill(os.getpid(), signal.SIGKILL)
    Trainer(run_config(ds.root), ds, {out!r}).fit(on_step=hook)
""")


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_dataset, tmp_path) -> None:
    reference = fit(tiny_dataset, tmp_path / "ref")
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parents[1]),
                                root=str(tiny_dataset.root), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "metrics.json").exists()
    assert len(per_epoch_losses(out)) == 3  # epochs 1-3 done, epoch 4 lost mid-way
    resumed = fit(tiny_dataset, out)
    assert np.array_equal(per_epoch_losses(out), per_epoch_losses(tmp_path / "ref"))
    ref_w = load_file(tmp_path / "ref" / "checkpoints" / "best.safetensors")
    res_w = load_file(out / "checkpoints" / "best.safetensors")
    assert all((ref_w[k] == res_w[k]).all() for k in ref_w)
    for key, value in reference.items():
        if key.startswith(("valid.", "test.")):
            assert resumed[key] == value or (np.isnan(value) and np.isnan(resumed[key])), key


def test_resume_refuses_another_config(tiny_dataset, tmp_path) -> None:
    fit(tiny_dataset, tmp_path / "r", epochs=1)
    with pytest.raises(ConfigError):
        fit(tiny_dataset, tmp_path / "r", epochs=1, lr=0.5)


def test_a_run_folder_in_use_is_refused_not_shared(tiny_dataset, tmp_path) -> None:
    out = tmp_path / "busy"
    with exclusive(out, "test holder"):
        assert is_locked(out)
        with pytest.raises(DmesrError, match="in use by another process"):
            train_run(run_config(tiny_dataset.root, epochs=1), out)
        res = CliRunner().invoke(train, ["--out", str(out), "--overwrite", "--config", "x.yaml"])
        assert res.exit_code != 0 and "in use" in str(res.exception)
        assert out.is_dir()  # --overwrite did not delete a folder in use
        cell = Cell("sasrec", "id", 1, False, (), out=out)
        assert run_cell(cell, threads=1).status == "busy"
    assert not is_locked(out)  # released with the holder; a killed holder releases too
    train_run(run_config(tiny_dataset.root, epochs=1), out)


def test_early_stopping_keeps_best_and_writes_run_dir(tiny_dataset, tmp_path) -> None:
    # a huge learning rate makes validation worse after the first epochs
    m = fit(tiny_dataset, tmp_path / "r", epochs=40, patience=2, lr=0.5)
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    scores = [r["valid.full.NDCG@10"] for r in log]
    assert len(log) < 40 and m["train.best_epoch"] == int(np.argmax(scores)) + 1
    assert len(log) == m["train.best_epoch"] + 2
    assert m["valid.full.NDCG@10"] == pytest.approx(max(scores))
    best = json.loads((tmp_path / "r" / "checkpoints" / "best.json").read_text())
    assert best["epoch"] == m["train.best_epoch"]
    for name in ("config.yaml", "run.json", "metrics.json", "per_user/test.full.ranks.npy",
                 "per_user/test.sampled.metrics.npy"):
        assert (tmp_path / "r" / name).exists(), name
    for key in ("test.full.NDCG@10", "test.sampled.HR@10", "test.full.tail_user.NDCG@10",
                "test.full.head_item.HR@10", "groups.head_item_min_train_count"):
        assert key in m


def test_cli_train_evaluate_with_baseline(tiny_dataset, tmp_path) -> None:
    from click.testing import CliRunner

    from dmesr.eval.commands import evaluate
    from dmesr.train.commands import train

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"dataset:\n  paths:\n    prepared: {tiny_dataset.root}\n"
                   "model:\n  hidden: 16\n  inner: 32\n  max_len: 10\n"
                   "train:\n  epochs: 2\n  batch_size: 8\n  threads: 1\n  progress: false\n")
    runner = CliRunner()
    res = runner.invoke(train, ["--config", str(cfg), "--out", str(tmp_path / "s"),
                                "--seeds", "1,2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    agg = json.loads((tmp_path / "s" / "aggregate.json").read_text())["metrics"]
    assert agg["test.full.NDCG@10"]["n"] == 2
    res = runner.invoke(train, ["--config", str(cfg), "--out", str(tmp_path / "pop"),
                                "model.backbone=pop"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = runner.invoke(evaluate, ["--run", str(tmp_path / "s" / "seed1"), "--run",
                                   str(tmp_path / "s" / "seed2"), "--baseline",
                                   str(tmp_path / "pop")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Wilcoxon" in res.output and "±" in res.output
    sig = json.loads((tmp_path / "s" / "seed1" / "significance_vs_pop.json").read_text())
    assert 0.0 <= sig["tests"]["NDCG@10"]["wilcoxon_p"] <= 1.0

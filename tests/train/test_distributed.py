"""Data-parallel training under torchrun: replicas stay equal, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dmesr.io import is_locked
from dmesr.train.distributed import Ranks, on_main, rank_seed

SCRIPT = textwrap.dedent("""
    import hashlib, os, sys
    from pathlib import Path
    import torch
    from dmesr.config import load_config
    from dmesr.data.dataset import PreparedDataset
    from dmesr.train.commands import train
    from dmesr.train.config import RunConfig
    from dmesr.train.trainer import Trainer

    def digest(model):
        return hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                       for p in model.parameters())).hexdigest()

    config, out = sys.argv[1], Path(sys.argv[2])
    cfg = load_config(RunConfig, [config])
    ds = PreparedDataset(cfg.dataset.paths["prepared"])
    trainer = Trainer(cfg, ds, out / "direct")
    trainer.fit()
    (out / f"rank{trainer.ranks.rank}.sha").write_text(digest(trainer.model))
    # stopped after epoch 2, then resumed to 3: must end where the direct run ended
    two = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})})
    Trainer(two, ds, out / "resumed").fit()
    resumed = Trainer(cfg, ds, out / "resumed")
    resumed.fit()
    (out / f"resumed{resumed.ranks.rank}.sha").write_text(digest(resumed.model))
    # the CLI under torchrun: rank 0 locks, writes and prints; the others only train
    train.main(["--config", config, "--out", str(out / "cli"), "--seeds", "1,2"],
               standalone_mode=False)
    # going on is refused on rank 0 (with eval_every=2, epoch 3 was validated only as the
    # last one): every rank must raise, none may be left waiting in a collective
    odd = cfg.train.model_copy(update={"eval_every": 2})
    Trainer(cfg.model_copy(update={"train": odd}), ds, out / "refused").fit()
    longer = odd.model_copy(update={"epochs": 5})
    try:
        Trainer(cfg.model_copy(update={"train": longer}), ds, out / "refused").fit()
    except Exception as exc:
        (out / f"refused{resumed.ranks.rank}.txt").write_text(type(exc).__name__)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tiny_dataset, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("ddp")
    config = root / "run.yaml"
    config.write_text(textwrap.dedent(f"""
        dataset: {{paths: {{prepared: {tiny_dataset.root}}}}}
        model: {{hidden: 16, inner: 32, max_len: 10, loss: bce, n_neg: 2}}
        train: {{threads: 1, progress: false, batch_size: 8, epochs: 3, patience: 50,
                 tensorboard: false}}
    """))
    script = root / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
         str(script), str(config), str(root)],
        capture_output=True, text=True, timeout=600, env=env)
    return root, proc


def test_replicas_stay_equal_and_rank0_writes_one_run(ddp_run) -> None:
    root, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = {p.read_text() for p in root.glob("rank*.sha")}
    assert len(list(root.glob("rank*.sha"))) == 2
    assert len(digests) == 1  # different rows and dropout per rank, one averaged gradient
    run = root / "direct"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]  # one writer: no duplicated lines
    assert np.isfinite([r["loss"] for r in log]).all()
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test.full.NDCG@10"] <= 1


def test_a_resumed_run_ends_where_the_uninterrupted_one_did(ddp_run) -> None:
    """Rank 1's dropout stream restarts from (seed, epoch, rank) at every epoch, so
    stopping after epoch 2 and resuming gives the weights of three epochs in one go."""
    root, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    direct = {p.read_text() for p in root.glob("rank*.sha")}
    resumed = {p.read_text() for p in root.glob("resumed*.sha")}
    assert len(list(root.glob("resumed*.sha"))) == 2
    assert resumed == direct and len(direct) == 1
    log = [json.loads(line) for line in (root / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    # it had finished at epoch 2: going on is noted once (rank 0), with every rank waiting
    record = json.loads((root / "resumed" / "run.json").read_text())
    assert [c["from_epoch"] for c in record["continued"]] == [2]
    assert (root / "resumed" / "metrics.epoch2.json").is_file()


def test_the_cli_under_torchrun_prints_once_per_seed(ddp_run) -> None:
    root, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (1, 2):
        assert (root / "cli" / f"seed{seed}" / "metrics.json").is_file()
        assert proc.stdout.count(f"seed{seed}: valid.full.NDCG@10") == 1
    assert (root / "cli" / "aggregate.json").is_file()
    assert not any(is_locked(root / "cli" / f"seed{seed}") for seed in (1, 2))


def test_a_refusal_to_go_on_stops_every_rank(ddp_run) -> None:
    root, proc = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "refused0.txt").read_text() == "ConfigError"
    assert (root / "refused1.txt").read_text() == "DmesrError"  # "rank 0 failed: …"
    assert (root / "refused" / "metrics.json").is_file()  # the finished run is kept


def test_single_process_ranks_do_the_work_in_place() -> None:
    assert on_main(Ranks(), lambda: 41 + 1) == 42
    assert not Ranks().active and Ranks().main
    assert len({rank_seed(2026, r) for r in range(8)}) == 8

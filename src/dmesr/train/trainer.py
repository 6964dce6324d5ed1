"""Training loop: AdamW, early stopping on validation NDCG@10 (full ranking), resumable.

One training sequence per user (the last max_len + 1 training items), loss at every
position (SPEC §7). Everything random (shuffling, dropout, negatives, BERT masks) draws
from torch's global RNG, seeded once; its state is checkpointed after every epoch, so a
run killed at any point and resumed reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmesr.config import dump_yaml
from dmesr.data.dataset import PreparedDataset
from dmesr.errors import ConfigError
from dmesr.eval.evaluate import EvalSplit, dataset_groups, evaluate, load_eval_split, save_per_user
from dmesr.features.store import check_features
from dmesr.io import provenance, read_json, read_jsonl, write_json, write_text
from dmesr.models import build_model, feature_record
from dmesr.train.checkpoint import load_checkpoint, save_checkpoint
from dmesr.train.config import RunConfig
from dmesr.train.continuation import inexact, record_continuation, still_stopped
from dmesr.train.distributed import (
    all_mean,
    average_gradients,
    broadcast_object,
    broadcast_parameters,
    broadcast_tensor,
    init_from_env,
    on_main,
    rank_seed,
)

# settings that may change between a killed run and its resumption
RESUMABLE_CHANGES = {("train", "epochs"), ("train", "max_minutes"), ("train", "progress"),
                     ("train", "tensorboard"), ("train", "threads")}

StepHook = Callable[[int, int], None]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_sequences(dataset: PreparedDataset, max_len: int) -> torch.Tensor:
    """Every user's training sequence, left-padded to [n_users, max_len + 1]: the rows
    that `train_batch` turns into inputs and next-item targets."""
    return torch.from_numpy(dataset.split("train").padded(max_len + 1))


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    for section, key in RESUMABLE_CHANGES:
        data[section].pop(key, None)
    return _relevant(data)


def _relevant(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the DMESR settings of a run whose encoder is not DMESR: they do not
    change that run, so a backbone file that sets one must not make its ID-only runs stale.
    Dataset paths are compared normalised (`a/b/../c` is `a/c`)."""
    paths = data.get("dataset", {}).get("paths")
    if isinstance(paths, dict):
        paths = {k: os.path.normpath(v) if isinstance(v, str) and "://" not in v else v
                 for k, v in paths.items()}
        data = {**data, "dataset": {**data["dataset"], "paths": paths}}
    encoder = data.get("model", {}).get("encoder", {})
    if isinstance(encoder, dict) and encoder.get("type") != "dmesr" and "dmesr" in encoder:
        data = {**data, "model": {**data["model"],
                                  "encoder": {k: v for k, v in encoder.items() if k != "dmesr"}}}
    return data


def config_changed(saved: dict[str, Any], cfg: RunConfig) -> bool:
    """Whether `cfg` asks for something else than the run that saved `saved`
    (its `comparable_config`). An option added to the code after that run counts as
    unchanged while it keeps its default (new options must default to the old behaviour)
    and as a change once a config or override sets it. A larger patience is no change:
    the run goes on where it stopped (continuation.py); a smaller one is."""
    old_patience = saved.get("train", {}).get("patience", cfg.train.patience)
    if cfg.train.patience < old_patience:
        return True
    return _differs(_without_patience(_relevant(saved)), _without_patience(_comparable(cfg)),
                    cfg.model_dump(mode="json", exclude_unset=True))


def _without_patience(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "train": {k: v for k, v in data.get("train", {}).items() if k != "patience"}}


def _differs(saved: object, now: object, explicit: object) -> bool:
    if isinstance(saved, dict) and isinstance(now, dict):
        given = explicit if isinstance(explicit, dict) else {}
        if any(k not in saved and k in given for k in now):
            return True
        return any(k not in now or _differs(v, now[k], given.get(k)) for k, v in saved.items())
    return saved != now


class JsonlLog:
    """Append-only JSON-lines log; `truncate(offset)` drops lines after a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        if self.path.exists():
            with open(self.path, "r+") as f:
                f.truncate(offset)


def _tensorboard(folder: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder / "tb"))


class Trainer:
    def __init__(self, cfg: RunConfig, dataset: PreparedDataset, out: Path) -> None:
        self.cfg = cfg
        self.ds = dataset
        self.out = Path(out)
        self.ckpt_dir = self.out / "checkpoints"
        self.log = JsonlLog(self.out / "log.jsonl")
        self.ranks = init_from_env()  # torchrun: data-parallel ranks (distributed.py)
        torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(
            cfg.model, dataset.n_items, popularity=dataset.train_item_popularity(),
            dataset=dataset,
        )
        if self.ranks.active:
            broadcast_parameters(self.model)
        self.optimizer = (
            torch.optim.AdamW(
                [p for p in self.model.parameters() if p.requires_grad],
                lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
            )
            if self.model.trainable else None
        )
        self.train_seqs = train_sequences(dataset, cfg.model.max_len)
        self.valid = load_eval_split(dataset, "valid", cfg.model.max_len)
        self.state: dict[str, Any] = {
            "epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad_evals": 0,
            "elapsed_s": 0.0, "train_s": 0.0, "time_to_best_s": 0.0, "log_offset": 0,
            "stopped": None,
        }

    # ---- run directory ---------------------------------------------------------------
    def _reseed_rank(self, epoch: int) -> None:
        """Ranks > 0 draw their own dropout and masks, from a stream seeded anew for every
        epoch, so a resumed run draws what the uninterrupted one did (rank 0 keeps the
        run's stream, which its checkpoints carry)."""
        if not self.ranks.main:
            torch.manual_seed(rank_seed(self.cfg.train.seed + epoch, self.ranks.rank))

    def prepare_dir(self, resume: bool) -> bool:
        """Write config/dataset records (rank 0); return True when resuming from `last`."""
        return on_main(self.ranks, lambda: self._prepare_dir(resume))

    def _prepare_dir(self, resume: bool) -> bool:
        self.out.mkdir(parents=True, exist_ok=True)
        last = self.ckpt_dir / "last.safetensors"
        cfg_path = self.out / "config.yaml"
        features = feature_record(self.cfg.model, self.ds)
        if resume and last.exists():
            saved = read_json(self.out / "run.json")
            if config_changed(saved["comparable_config"], self.cfg):
                raise ConfigError(
                    f"{self.out} holds a run with a different configuration; "
                    "use another --out or --overwrite"
                )
            self.ds.check_hash(saved["dataset"]["content_hash"], f"run {self.out}")
            check_features(saved.get("features"), features, f"run {self.out}")
            return True
        write_text(cfg_path, dump_yaml(self.cfg))
        write_json(self.out / "run.json", provenance(
            dataset={"path": str(self.ds.root), "name": self.ds.name,
                     "content_hash": self.ds.content_hash},
            features=features,
            comparable_config=_comparable(self.cfg),
        ))
        self.log.truncate(0)
        return False

    def _note_continuation(self) -> None:
        """A resumed run goes on: a finished one (only its stopping rule grew) keeps its
        old metrics as metrics.epoch<N>.json, and run.json / config.yaml take the new
        stopping settings. metrics.json goes first: a kill in between leaves a run that
        resumes, never one that looks finished under settings it has not trained for."""
        epoch = self.state["epoch"]
        metrics = self.out / "metrics.json"
        if metrics.is_file():
            if problem := inexact(self.state, self.cfg.train):
                raise ConfigError(f"{self.out} cannot go on: {problem}; "
                                  "use another --out or --overwrite")
            metrics.replace(self.out / f"metrics.epoch{epoch}.json")
        if record_continuation(self.out, self.cfg, _comparable(self.cfg), epoch):
            write_text(self.out / "config.yaml", dump_yaml(self.cfg))

    # ---- loop ----------------------------------------------------------------------------
    def train_epoch(self, epoch: int, on_step: StepHook | None) -> float:
        self.model.train()
        self._reseed_rank(epoch)
        perm = torch.randperm(self.train_seqs.shape[0])
        ranks = self.ranks
        if ranks.active:  # one order for every rank: rank 0's
            perm = broadcast_tensor(perm)
        bs = self.cfg.train.batch_size
        total, n = 0.0, 0
        for step, lo in enumerate(range(0, len(perm), bs)):
            if on_step is not None:
                on_step(epoch, step)
            rows = perm[lo : lo + bs]
            if ranks.active:  # this rank's share of the global batch
                rows = rows[ranks.rank :: ranks.world]
            self.optimizer.zero_grad(set_to_none=True)
            if len(rows):
                loss = self.model.calculate_loss(self.model.train_batch(self.train_seqs[rows]))
                loss.backward()
                total += float(loss.detach())
                n += 1
            if ranks.active:
                average_gradients(self.model.parameters(), len(rows) > 0)
            if self.cfg.train.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
        return all_mean(total, n) if ranks.active else total / max(n, 1)

    def validate(self) -> float:
        """Validation score (rank 0 evaluates; every rank gets the score)."""
        return on_main(self.ranks, self._validate)

    def _validate(self) -> float:
        metrics, _ = evaluate(self.model, self.valid, self.cfg.eval, modes=("full",))
        return metrics[f"valid.full.{self.cfg.eval.select_metric}"]

    def fit(self, resume: bool = True, on_step: StepHook | None = None) -> dict[str, float]:
        resuming = self.prepare_dir(resume)
        main = self.ranks.main
        if not self.model.trainable:
            if main:
                self._save_best(0, float("nan"))
            return self.finish()
        if resuming:  # every rank loads the same weights and optimiser state
            meta = load_checkpoint(
                self.ckpt_dir / "last.safetensors", self.model, self.optimizer, rng=True
            )
            self.state = {k: v for k, v in meta.items() if k != "optimizer"}
            if main:
                self.log.truncate(self.state["log_offset"])
            if still_stopped(self.state, self.cfg.train):
                return self.finish()
            # via on_main: a refusal on rank 0 must stop the other ranks too
            on_main(self.ranks, self._note_continuation)
            self.state["stopped"] = None  # a larger patience or budget lets it go on
        tb = _tensorboard(self.out, self.cfg.train.tensorboard and main)
        self._loop(on_step, tb)
        if tb is not None:
            tb.close()
        return self.finish()

    def _loop(self, on_step: StepHook | None, tb: Any) -> None:
        tc = self.cfg.train
        main = self.ranks.main
        bar = _progress(tc.epochs, self.state["epoch"], tc.progress and main)
        st = self.state
        while st["epoch"] < tc.epochs and not st["stopped"]:
            t0 = time.perf_counter()
            epoch = st["epoch"] + 1
            loss = self.train_epoch(epoch, on_step)
            train_s = time.perf_counter() - t0
            record: dict[str, Any] = {"epoch": epoch, "loss": loss, "train_s": round(train_s, 4)}
            if epoch % tc.eval_every == 0 or epoch == tc.epochs:
                score = self.validate()
                record[f"valid.full.{self.cfg.eval.select_metric}"] = score
                if main:
                    self._after_eval(epoch, score, t0)
            st["epoch"] = epoch
            st["train_s"] += train_s
            st["elapsed_s"] += time.perf_counter() - t0
            if tc.max_minutes and st["elapsed_s"] > 60 * tc.max_minutes and not st["stopped"]:
                st["stopped"] = "time budget"
            record["elapsed_s"] = round(st["elapsed_s"], 3)
            if main:
                self._record_epoch(record, tb, epoch)
            if self.ranks.active:  # rank 0's decisions (best, stop, budget) for every rank
                self.state = st = broadcast_object(st)
            _update(bar, loss, st["best_score"])
        if bar is not None:
            bar.close()

    def _record_epoch(self, record: dict[str, Any], tb: Any, epoch: int) -> None:
        """Log line, TensorBoard scalars and the `last` checkpoint of one epoch (rank 0)."""
        st = self.state
        self.log.write(record)
        if tb is not None:
            for key, value in record.items():
                tb.add_scalar(key, value, epoch)
        st["log_offset"] = self.log.offset()
        save_checkpoint(self.ckpt_dir / "last.safetensors", self.model, st,
                        self.optimizer, rng=True)

    def _after_eval(self, epoch: int, score: float, t0: float) -> None:
        st = self.state
        if score > st["best_score"]:
            st.update(best_score=score, best_epoch=epoch, bad_evals=0)
            st["time_to_best_s"] = st["elapsed_s"] + time.perf_counter() - t0
            self._save_best(epoch, score)
        else:
            st["bad_evals"] += 1
            if st["bad_evals"] >= self.cfg.train.patience:
                st["stopped"] = "early stopping"

    def _save_best(self, epoch: int, score: float) -> None:
        save_checkpoint(self.ckpt_dir / "best.safetensors", self.model, {
            "epoch": epoch, f"valid.full.{self.cfg.eval.select_metric}": score,
            "dataset_content_hash": self.ds.content_hash,
        })

    # ---- final evaluation ------------------------------------------------------------
    def finish(self) -> dict[str, float]:
        """Test the best checkpoint and write metrics.json (rank 0; all ranks get them)."""
        return on_main(self.ranks, self._finish)

    def _finish(self) -> dict[str, float]:
        load_checkpoint(self.ckpt_dir / "best.safetensors", self.model)
        metrics = evaluate_run_model(self.model, self.ds, self.cfg, self.out)
        st = self.state
        epochs = max(st["epoch"], 1)
        metrics.update({
            "train.epochs": st["epoch"], "train.best_epoch": st["best_epoch"],
            "train.s_per_epoch": st["train_s"] / epochs,
            "train.time_to_best_s": st["time_to_best_s"], "train.wall_s": st["elapsed_s"],
            "train.peak_rss_mb": peak_rss_mb(),
        })
        write_json(self.out / "metrics.json", {**metrics, "stopped": st["stopped"]})
        return metrics


def evaluate_run_model(
    model: nn.Module, ds: PreparedDataset, cfg: RunConfig, out: Path
) -> dict[str, Any]:
    """Valid + test, full + sampled, with long-tail groups; saves per-user vectors."""
    metrics: dict[str, Any] = {}
    for name in ("valid", "test"):
        split: EvalSplit = load_eval_split(ds, name, cfg.model.max_len)  # type: ignore[arg-type]
        groups = dataset_groups(ds, split.targets.numpy(), cfg.eval)
        modes = ("full", "sampled") if cfg.eval.sampled else ("full",)
        m, ranks = evaluate(model, split, cfg.eval, groups, modes)
        metrics.update(m)
        save_per_user(out / "per_user", name, ranks, cfg.eval)
        for key, value in groups.thresholds.items():
            metrics[f"groups.{key}"] = value
    metrics["protocol"] = (
        "leave-one-out; full ranking over all items"
        + (" excluding history items" if cfg.eval.exclude_history else " (history kept)")
        + "; sampled ranking vs the saved negatives; ties ranked pessimistically"
    )
    return metrics


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="ep", dynamic_ncols=True)


def _update(bar: Any, loss: float, best: float) -> None:
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.4f}", best=f"{best:.4f}")
        bar.update(1)


def per_epoch_losses(run_dir: Path) -> np.ndarray:
    """The loss curve of a run (from its log), for tests and reports."""
    return np.array([r["loss"] for r in read_jsonl(run_dir / "log.jsonl")])

"""One RecBole 1.2.1 run (model, seed) on atomic files written by compare_recbole.py.

Runs inside the separate RecBole venv (docs/recbole_comparison.md); imports nothing from
dmesr. Prints one JSON line with test NDCG@10/HR@10 (full ranking), seconds per epoch,
epochs run, wall time to the best validation score and peak RSS.

The RecBole venv pins numpy < 2 (RecBole 1.2.1 aliases `np.float_`, gone in numpy 2).
Workarounds, none of which changes RecBole's computations:
- torch >= 2.6 `torch.load` refuses RecBole's checkpoints (weights_only): the best
  state is kept in memory instead of reloaded from disk;
- RecBole has no time budget: a validation callback stops training when it is spent;
- RecBole cannot resume without those checkpoints: with `--state FILE` the same callback
  saves everything a resumed run needs after every validation (model, AdamW moments,
  early-stopping counter, best state, RNG and data-loader shuffling states, training
  time spent) as one `.npz` (arrays + a JSON header, no pickle) replaced atomically, so
  a run of many hours can span several sittings and a kill loses at most one epoch.
  The budget counts training time over all sittings.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

DEFAULTS = {  # RecBole's defaults for these models, stated so the table can cite them
    "SASRec": {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
               "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
               "loss_type": "CE"},
    "BERT4Rec": {"hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
                 "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "mask_ratio": 0.2,
                 "loss_type": "CE"},
    "GRU4Rec": {"embedding_size": 64, "hidden_size": 128, "num_layers": 1,
                "dropout_prob": 0.3, "loss_type": "CE"},
}


STATE_VERSION = 1


def save_state(path: Path, header: dict, model, best_state: dict | None, optimizer,
               loader_generator: torch.Generator) -> None:
    """Everything a resumed run needs, as one .npz written next to `path` and renamed."""
    opt = optimizer.state_dict()
    arrays = {f"model/{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if best_state is not None:
        arrays |= {f"best/{k}": v.detach().cpu().numpy() for k, v in best_state.items()}
    for idx, slots in opt["state"].items():
        arrays |= {f"opt/{idx}/{k}": torch.as_tensor(v).cpu().numpy() for k, v in slots.items()}
    arrays["rng/torch"] = torch.get_rng_state().numpy()
    arrays["rng/loader"] = loader_generator.get_state().numpy()
    np_state, py_state = np.random.get_state(), random.getstate()
    header = {**header, "version": STATE_VERSION, "param_groups": opt["param_groups"],
              "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
              "rng_python": [py_state[0], list(py_state[1]), py_state[2]]}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_state(path: Path, expected: dict, model, optimizer,
               loader_generator: torch.Generator) -> tuple[dict, dict | None]:
    """Restore a saved run in place; returns (header, best state or None)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        header = json.loads(arrays.pop("header").tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SystemExit(f"{path}: unreadable resume state ({exc}); delete it to start "
                         "the run over") from exc
    if header.get("version") != STATE_VERSION or header["run"] != expected:
        raise SystemExit(f"{path} belongs to another run ({header.get('run')}); "
                         f"expected {expected}: delete it to start over")
    model.load_state_dict({k[6:]: torch.from_numpy(v) for k, v in arrays.items()
                           if k.startswith("model/")})
    best = {k[5:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("best/")}
    slots: dict[int, dict] = {}
    for key, value in arrays.items():
        if key.startswith("opt/"):
            _, idx, name = key.split("/", 2)
            slots.setdefault(int(idx), {})[name] = torch.from_numpy(value)
    optimizer.load_state_dict({"state": slots, "param_groups": header["param_groups"]})
    torch.set_rng_state(torch.from_numpy(arrays["rng/torch"]))
    loader_generator.set_state(torch.from_numpy(arrays["rng/loader"]))
    kind, keys, *rest = header["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = header["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    return header, best or None


class BudgetSpent(Exception):
    pass


def time_steps(model, trainer, train_data, n_steps: int, warmup: int = 3) -> dict:
    """Median seconds of a RecBole training step (next batch + loss + backward + AdamW)."""
    model.train()
    times: list[float] = []
    batches = iter(train_data)
    for _ in range(n_steps + warmup):
        t = time.perf_counter()
        interaction = next(batches)
        trainer.optimizer.zero_grad()
        model.calculate_loss(interaction).backward()
        trainer.optimizer.step()
        times.append(time.perf_counter() - t)
    return {"system": "recbole", "ms_per_step": 1000 * float(np.median(times[warmup:])),
            "steps": n_steps, "train_samples": len(train_data._dataset),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-path", required=True, help="folder holding DATASET/DATASET.inter")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--model", required=True, choices=sorted(DEFAULTS))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--budget-minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--state", type=Path, default=None,
                    help="resume file: saved after every validation, resumed from if present")
    ap.add_argument("--time-steps", type=int, default=0,
                    help="only time this many training steps (data loading included) and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    config = Config(model=args.model, dataset=args.dataset, config_dict={
        "data_path": args.data_path, "seed": args.seed, "reproducibility": True,
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": args.max_len, "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": "full"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10",
        "train_batch_size": args.batch_size, "eval_batch_size": 4096, "epochs": args.epochs,
        "stopping_step": args.patience, "learning_rate": 0.001, "device": "cpu",
        "use_gpu": False, "worker": 0, "show_progress": False, "log_wandb": False,
        "checkpoint_dir": "/tmp/recbole_saved", **DEFAULTS[args.model],
    })
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to("cpu")
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    if args.time_steps:
        print(json.dumps(time_steps(model, trainer, train_data, args.time_steps)))
        return

    epoch_times: list[float] = []
    orig_epoch = trainer._train_epoch

    def timed_epoch(*a, **kw):
        t = time.perf_counter()
        out = orig_epoch(*a, **kw)
        epoch_times.append(time.perf_counter() - t)
        return out

    trainer._train_epoch = timed_epoch
    best = {"score": -1.0, "state": None, "time": 0.0, "epoch": 0}
    run = {k: getattr(args, k) for k in ("dataset", "model", "seed", "max_len", "batch_size",
                                         "patience", "budget_minutes")}
    spent, sittings, stopped = 0.0, 1, None  # stopped: set by a resumed finished run
    if args.state is not None and args.state.exists():
        header, best_state = load_state(args.state, run, model, trainer.optimizer,
                                        train_data.generator)
        trainer.start_epoch, trainer.cur_step = header["epoch"] + 1, header["cur_step"]
        trainer.best_valid_score = header["best_valid_score"]
        best.update(header["best"], state=best_state)
        epoch_times.extend(header["epoch_times"])
        spent, sittings = header["train_seconds"], header["sittings"] + 1
        if header["stopped"]:  # killed between its last epoch and the result: test only
            trainer.start_epoch, stopped = trainer.epochs, header["stopped"]
        print(f"[recbole {args.model} seed {args.seed}] resumed after epoch "
              f"{header['epoch'] + 1} ({spent / 60:.1f} min spent)", file=sys.stderr, flush=True)
    t_fit = time.perf_counter() - spent

    def callback(epoch_idx: int, valid_score: float) -> None:
        if valid_score > best["score"]:
            best.update(score=valid_score, state=copy.deepcopy(model.state_dict()),
                        time=time.perf_counter() - t_fit, epoch=epoch_idx + 1)
        elapsed = time.perf_counter() - t_fit
        over_budget = elapsed > 60 * args.budget_minutes
        if args.state is not None:
            save_state(args.state, {
                "run": run, "epoch": epoch_idx, "cur_step": trainer.cur_step,
                "best_valid_score": trainer.best_valid_score, "epoch_times": epoch_times,
                "best": {k: v for k, v in best.items() if k != "state"},
                "train_seconds": elapsed, "sittings": sittings,
                "stopped": budget_note if over_budget else
                "early stopping" if trainer.cur_step > trainer.stopping_step else None,
            }, model, best["state"], trainer.optimizer, train_data.generator)
        # stderr streams through compare_recbole.py: a multi-hour run shows its progress
        print(f"[recbole {args.model} seed {args.seed}] epoch {epoch_idx + 1}: valid NDCG@10 "
              f"{valid_score:.4f} (best {best['score']:.4f} @ {best['epoch']}), "
              f"{epoch_times[-1]:.0f} s/epoch, {elapsed / 60:.1f} of "
              f"{args.budget_minutes:g} min", file=sys.stderr, flush=True)
        if over_budget:
            raise BudgetSpent

    budget_note = f"time budget ({args.budget_minutes} min)"
    try:
        trainer.fit(train_data, valid_data, saved=False, show_progress=False,
                    callback_fn=callback)
    except BudgetSpent:
        stopped = budget_note
    if stopped is None:
        stopped = "early stopping" if trainer.cur_step > trainer.stopping_step else "max epochs"
    model.load_state_dict(best["state"])
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    print(json.dumps({
        "system": "recbole", "model": args.model, "seed": args.seed,
        "test_full_NDCG@10": float(test["ndcg@10"]), "test_full_HR@10": float(test["hit@10"]),
        "valid_full_NDCG@10": float(best["score"]), "s_per_epoch": float(np.mean(epoch_times)),
        "epochs": len(epoch_times), "best_epoch": best["epoch"],
        "time_to_best_s": best["time"], "wall_s": time.perf_counter() - t_start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stopped": stopped, "sittings": sittings,
        "batch_size": args.batch_size, "max_len": args.max_len,
        "train_samples": len(train_data._dataset), "settings": DEFAULTS[args.model],
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Seconds per training step, dmesr vs RecBole 1.2.1, at the SAME batch size.

    python benchmarks/step_time_recbole.py --batch-size 128 --steps 30 --threads 1

A step is: next batch, loss, backward, AdamW update (data loading included), for the
SASRec, BERT4Rec and GRU4Rec settings of `compare_recbole.py` on the same prepared
ML-100K split. A batch is B training samples of length <= 50 for both systems; RecBole's
sample is one prefix with a loss at its last position, ours a user sequence with a loss at
every position. So the table gives: ms per step at equal B, the speed-up per supervised
target (a loss position), and seconds per epoch as each system defines an epoch (RecBole: every prefix, ~97k samples; dmesr: one sequence
per user, 943). Each system runs in its own process, one after the other. Writes
benchmarks/results/step_time_recbole.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from compare_recbole import MODELS, recbole_available, write_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def dmesr_steps(model_name: str, prepared: Path, batch: int, n_steps: int, threads: int,
                warmup: int = 3) -> dict:
    import torch

    from dmesr.config import load_config
    from dmesr.data.dataset import PreparedDataset
    from dmesr.models import build_model
    from dmesr.train.config import RunConfig
    from dmesr.train.trainer import train_sequences

    torch.set_num_threads(threads)
    cfg = load_config(RunConfig, [REPO / "configs" / "experiments" / f"{MODELS[model_name]}_ml100k.yaml"],
                      [f"dataset.paths.prepared={prepared}"])
    ds = PreparedDataset(prepared)
    torch.manual_seed(0)
    model = build_model(cfg.model, ds.n_items, dataset=ds).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    seqs = train_sequences(ds, cfg.model.max_len)
    order = torch.randperm(seqs.shape[0])
    times, targets = [], []
    for step in range(n_steps + warmup):
        t = time.perf_counter()
        rows = order[(torch.arange(batch) + step * batch) % seqs.shape[0]]
        train_batch = model.train_batch(seqs[rows])
        targets.append(int((train_batch["target"] > 0).sum()))
        loss = model.calculate_loss(train_batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return {"system": "dmesr", "ms_per_step": 1000 * statistics.median(times[warmup:]),
            "steps": n_steps, "train_samples": int(seqs.shape[0]),
            "targets_per_step": statistics.mean(targets),
            "max_len": cfg.model.max_len,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepared", type=Path, default=REPO / "data" / "ml100k")
    ap.add_argument("--models", default="SASRec,BERT4Rec,GRU4Rec")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recbole-python", default=str(REPO / ".venv-recbole" / "bin" / "python"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one dmesr model
    args = ap.parse_args()
    prepared = args.prepared.resolve()
    if args.worker:
        print(json.dumps(dmesr_steps(args.worker, prepared, args.batch_size, args.steps, args.threads)))
        return
    has_recbole = recbole_available(args.recbole_python)
    data = write_atomic(prepared, RESULTS / "compare_recbole_runs" / "atomic", "dmesr_ml100k") \
        if has_recbole else None
    rows = []
    for model in args.models.split(","):
        ours = json.loads(subprocess.run(
            [sys.executable, __file__, "--worker", model, "--prepared", str(prepared),
             "--batch-size", str(args.batch_size), "--steps", str(args.steps),
             "--threads", str(args.threads)],
            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        row = {"model": model, "batch_size": args.batch_size, "dmesr": ours}
        if has_recbole:
            res = subprocess.run(
                [args.recbole_python, str(REPO / "benchmarks" / "recbole_worker.py"),
                 "--data-path", str(data), "--dataset", "dmesr_ml100k", "--model", model,
                 "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                 "--time-steps", str(args.steps)],
                capture_output=True, text=True, cwd=data, check=True)
            rb = json.loads(res.stdout.strip().splitlines()[-1])
            row["recbole"] = rb
            rb["targets_per_step"] = args.batch_size  # one loss position per prefix sample
            row["step_speedup"] = rb["ms_per_step"] / ours["ms_per_step"]
            row["per_target_speedup"] = (rb["ms_per_step"] / rb["targets_per_step"]) / (
                ours["ms_per_step"] / ours["targets_per_step"])
        rows.append(row)
    print(f"ms per training step at batch {args.batch_size}, {args.threads} thread(s); "
          "s/epoch as each system defines an epoch")
    print(f"{'model':9} {'dmesr ms':>9} {'RecBole ms':>11} {'speed-up':>9} "
          f"{'dmesr s/ep':>11} {'RecBole s/ep':>13} {'per target':>11} {'dmesr RSS':>10} "
          f"{'RecBole RSS':>12}")
    for r in rows:
        d, b = r["dmesr"], r.get("recbole")
        d_ep = d["ms_per_step"] / 1000 * -(-d["train_samples"] // args.batch_size)
        line = f"{r['model']:9} {d['ms_per_step']:9.1f} "
        if b:
            b_ep = b["ms_per_step"] / 1000 * -(-b["train_samples"] // args.batch_size)
            r["dmesr_s_per_epoch"], r["recbole_s_per_epoch"] = d_ep, b_ep
            line += (f"{b['ms_per_step']:11.1f} {r['step_speedup']:8.2f}x {d_ep:11.1f} "
                     f"{b_ep:13.1f} {r['per_target_speedup']:10.1f}x {d['peak_rss_mb']:9.0f}M "
                     f"{b['peak_rss_mb']:11.0f}M")
        else:
            line += f"{'n/a':>11} {'':>9} {d_ep:11.1f}"
        print(line)
    out = RESULTS / "step_time_recbole.json"
    out.write_text(json.dumps({"batch_size": args.batch_size, "threads": args.threads,
                               "steps": args.steps, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

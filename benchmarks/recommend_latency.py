"""Serving cost of a trained run: one user per call (an HTTP request's model work) and
every user in chunks (`dmesr recommend --all-users`).

    python benchmarks/recommend_latency.py --run artifacts/demo_ml100k/runs/sasrec/{id,dmesr}/seed2026
Prints and writes benchmarks/results/recommend_latency.json: one row per run with the
median / p95 ms of a single-user call and users/s for the whole batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dmesr.serve.recommender import Recommender

RESULTS = Path(__file__).resolve().parent / "results" / "recommend_latency.json"


def measure(run: Path, k: int, n_single: int) -> dict:
    rec = Recommender.from_run(run)
    users = rec.user_keys
    rec.for_users(users[:8], k)  # warm-up (and the item side, computed once)
    single = []
    for i in range(n_single):
        t0 = time.perf_counter()
        rec.for_users([users[i % len(users)]], k)
        single.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    rec.for_users(users, k)
    batch_s = time.perf_counter() - t0
    single.sort()
    info = rec.describe()
    return {"run": str(run), **{key: info[key] for key in ("backbone", "encoder", "items", "users")},
            "k": k, "single_ms_median": round(statistics.median(single), 2),
            "single_ms_p95": round(single[int(0.95 * (len(single) - 1))], 2),
            "all_users_s": round(batch_s, 3), "all_users_per_s": round(len(users) / batch_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, nargs="+", required=True,
                    help="run directories of `dmesr train`")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--single", type=int, default=200, help="single-user calls to time")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for run in args.run:
        r = measure(run, args.k, args.single)
        rows.append(r)
        print(f"{r['backbone']}/{r['encoder']}, {r['items']:,} items: one user "
              f"{r['single_ms_median']} ms median ({r['single_ms_p95']} p95); all "
              f"{r['users']:,} users {r['all_users_s']:.2f} s ({r['all_users_per_s']:,} users/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

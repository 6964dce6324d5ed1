"""Preparation at scale: synthetic logs of 1M and 10M interactions through `dmesr prepare`.

Each size runs in a fresh subprocess (generic Parquet reader -> full preparation,
including k-core, negatives and atomic writing) that reports its own wall time and peak
RSS. Writes benchmarks/results/prepare_scale.json.

    python benchmarks/prepare_scale.py                 # 1M and 10M
    python benchmarks/prepare_scale.py --sizes 1000000 # just one size
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results" / "prepare_scale.json"


def make_log(n: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Zipf-ish item popularity, users with ~50 interactions, timestamps with ties."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n // 50, 10), max(n // 100, 10)
    user = rng.integers(0, n_users, n)
    item = np.minimum(rng.zipf(1.2, n), n_items) - 1
    item = (item * 7919 + user % 3) % n_items  # spread the head over ids
    ts = 1_600_000_000 + rng.integers(0, 86_400 * 365, n) // 60 * 60  # minute ties
    inter = folder / "interactions.parquet"
    pd.DataFrame({"user": user.astype(str), "item": item.astype(str), "timestamp": ts,
                  "rating": rng.integers(1, 6, n).astype(np.float32)}).to_parquet(inter)
    items = folder / "items.parquet"
    pd.DataFrame({"item": np.arange(n_items).astype(str),
                  "title": [f"item {i}" for i in range(n_items)]}).to_parquet(items)
    return inter, items


def run_one(inter: Path, items: Path, out: Path) -> dict:
    """Runs inside the child process: prepare, then report time and own peak RSS."""
    from dmesr.data.commands import load_dataset_config
    from dmesr.data.prepare import prepare

    cfg = load_dataset_config(None, ["filter.user_min=5", "filter.item_min=5", "images.check=none"],
                              "generic", inter, items)
    t0 = time.perf_counter()
    ds = prepare(cfg, out, log=lambda _: None, progress=False)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb, 1),
            "users": ds.n_users, "items": ds.n_items,
            "kept_interactions": ds.manifest["stats"]["interactions"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*map(Path, args.child))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / str(n)
            folder.mkdir()
            inter, items = make_log(n, folder)
            proc = subprocess.run([sys.executable, __file__, "--child", str(inter), str(items),
                                   str(folder / "out")], capture_output=True, text=True,
                                  check=True)
            row = {"interactions": n, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{n:>12,} interactions: {row['seconds']:7.2f} s, "
                  f"peak RSS {row['peak_rss_mb']:8.1f} MB "
                  f"({row['users']:,} users, {row['items']:,} items kept)", flush=True)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        ratio = (b["seconds"] / a["seconds"]) / (b["interactions"] / a["interactions"])
        print(f"time per interaction, largest vs smallest: {ratio:.2f}x (1.0 = linear)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": "2 cores, 24 GiB (dev box)", "rows": rows},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Stage A `local` backend: items/s with batched decoding against one prompt at a time.

Runs `dmesr enhance --views txt` on the first N items of a prepared dataset with one
llama.cpp model (`workers=1`, one thread) at each batch size, each into a fresh cache,
and reports seconds, items/s, the speed-up over batch 1 and how many answers equal the
batch-1 answers (batching changes the matrix kernels, so greedy decoding can drift after
a near-tie).

    python benchmarks/enhance_batch.py --data data/ml100k [--n 64] [--batches 1 4 8 16]

Writes benchmarks/results/enhance_batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd

from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.runner import DESCRIPTIONS, run_enhance

RESULTS = Path(__file__).resolve().parent / "results" / "enhance_batch.json"


def run(data: Path, n: int, batch: int, max_tokens: int, cache: Path) -> tuple[float, pd.Series]:
    cfg = EnhanceConfig.model_validate({
        "backend": "local", "views": ["txt"], "cache_dir": str(cache),
        "local": {"workers": 1, "n_threads": 1, "batch": batch, "max_tokens": max_tokens}})
    t0 = time.perf_counter()
    summary = run_enhance(data, cfg, limit=n, progress=False, log=lambda _: None)
    seconds = time.perf_counter() - t0
    if summary.sent["txt"] != n:
        raise SystemExit(f"batch {batch}: {summary.sent['txt']} of {n} descriptions were "
                         f"generated ({summary.sent}); the timing would not compare")
    desc = pd.read_parquet(cfg.cache_root(data) / DESCRIPTIONS)
    return seconds, desc[desc.view == "txt"].set_index("item")["text"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/ml100k"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=24, help="the demo's setting")
    args = ap.parse_args()
    if not (args.data / "manifest.json").exists():
        raise SystemExit(f"{args.data}: not a prepared dataset (run `dmesr prepare` first)")
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batches:
            seconds, answers = run(args.data, args.n, b, args.max_tokens, Path(tmp) / f"b{b}")
            if base is None:
                base = (seconds, answers)
            same = int((answers.reindex(base[1].index) == base[1]).sum())
            rows.append({"batch": b, "seconds": round(seconds, 2),
                         "items_per_s": round(args.n / seconds, 3),
                         "speedup_vs_first": round(base[0] / seconds, 2),
                         "answers_equal_to_first": f"{same}/{len(base[1])}"})
            print(json.dumps(rows[-1]), flush=True)
    out = {"data": str(args.data), "n": args.n, "max_tokens": args.max_tokens,
           "workers": 1, "n_threads": 1, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Full-catalogue cross-entropy: one block of logits vs row blocks (models/losses.py).

    python benchmarks/ce_blocks.py --threads 1

For a training step's shapes (positions x catalogue x width) of ML-100K and the H&M
sample, times loss + backward with the whole [positions, items] logits matrix at once
and with blocks of 2-32 MiB: the times in one process with the settings interleaved, the
peak RSS of each setting in a process of its own. Writes benchmarks/results/ce_blocks.json.
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
RESULTS = REPO / "benchmarks" / "results" / "ce_blocks.json"
# positions with a target in one step of 128 sequences (max_len 50), items + padding, width
SHAPES = {"ML-100K": (5_200, 1_350, 96), "H&M sample": (2_900, 16_588, 96)}
ONE_BLOCK = 1e9


def _inputs(positions: int, items: int, width: int):
    import torch

    torch.manual_seed(0)
    return (torch.randn(positions, width, requires_grad=True),
            torch.randn(items, width, requires_grad=True), torch.randint(1, items, (positions,)))


def peak_rss(positions: int, items: int, width: int, block_mb: float) -> float:
    """MB of peak RSS that one loss + backward adds over its inputs (run in a fresh process)."""
    from dmesr.models.losses import catalogue_cross_entropy

    h, w, target = _inputs(positions, items, width)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    catalogue_cross_entropy(h, w, target, block_mb).backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def timings(positions: int, items: int, width: int, blocks: list[float], repeats: int) -> dict:
    """Median ms of loss + backward per block size, the sizes interleaved round-robin so
    that load from other processes hits them alike."""
    from dmesr.models.losses import catalogue_cross_entropy

    h, w, target = _inputs(positions, items, width)
    times: dict[float, list[float]] = {b: [] for b in blocks}
    for rep in range(repeats + 1):  # the first round warms up
        for block in blocks:
            start = time.perf_counter()
            catalogue_cross_entropy(h, w, target, block).backward()
            if rep:
                times[block].append(time.perf_counter() - start)
    return {str(b): 1000 * statistics.median(t) for b, t in times.items()}


def _worker(args: list[str]) -> dict | float:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--blocks", default="2,8,32", help="block sizes in MiB")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        kind, positions, items, width, *blocks = args.worker
        shape = (int(positions), int(items), int(width))
        blocks_mb = [float(b) for b in blocks]
        print(json.dumps(peak_rss(*shape, blocks_mb[0]) if kind == "rss"
                         else timings(*shape, blocks_mb, args.repeats)))
        return
    blocks = [ONE_BLOCK, *(float(b) for b in args.blocks.split(","))]
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats), "--worker"]
    rows = []
    print(f"{'shape':12} {'block':>8} {'ms':>8} {'peak RSS over inputs':>21}")
    for name, (positions, items, width) in SHAPES.items():
        shape = [str(positions), str(items), str(width)]
        ms = _worker([*common, "time", *shape, *map(str, blocks)])
        for block in blocks:
            row = {"shape": name, "positions": positions, "items": items, "width": width,
                   "block_mb": None if block == ONE_BLOCK else block, "ms": ms[str(block)],
                   "rss_over_inputs_mb": _worker([*common, "rss", *shape, str(block)])}
            rows.append(row)
            label = "one" if block == ONE_BLOCK else f"{block:g} MiB"
            print(f"{name:12} {label:>8} {row['ms']:8.1f} {row['rss_over_inputs_mb']:18.0f} MB",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats,
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

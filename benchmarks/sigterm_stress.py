"""Does `kill` (SIGTERM) always stop `dmesr enhance`? Many kills at random moments.

    python benchmarks/sigterm_stress.py --trials 150

Each trial runs `dmesr enhance` on a synthetic 150-item dataset against a local fake
OpenAI-compatible server (half the trials hold every request after the 40th, as the test
suite does) through `dmesr.enhance.testing.sigterm_enhance_cli`, the helper the kill tests
use: SIGTERM once a random number (1-60; at most 40 when held) of answers is cached, then
up to 15 s to exit. A child still running then "hangs" (its stacks, dumped with SIGABRT,
are kept in the JSON); exit 0 means it ran to the end despite the signal; "no kill" that
it ended before it.
Writes benchmarks/results/sigterm_stress.json with the exit codes and hangs counted.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections import Counter
from pathlib import Path

from dmesr.enhance.cache import cache_path
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.testing import RecordingServer, make_prepared, sigterm_enhance_cli
from dmesr.io import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "sigterm_stress.json"
N_ITEMS = 150


def trial(root: Path, rng: random.Random, wait_s: float) -> dict:
    ds = make_prepared(root / "data", n_items=N_ITEMS, with_image=[False] * N_ITEMS)
    hold = rng.choice([None, 40])
    server = RecordingServer(delay_s=rng.choice([0.0, 0.002, 0.01]), hold_after=hold).start()
    section = {"backend": "openai", "cache_dir": str(root / "cache"), "fsync_every": 5,
               "openai": {"base_urls": [server.base_url], "concurrency": 4}}
    config = root / "enhance.yaml"
    config.write_text(json.dumps({"enhance": section}))
    path = cache_path(EnhanceConfig.model_validate(section).cache_root(ds.root), "txt")
    # requests past `hold` wait for release(): with 40 held, the 40th answer is the last
    target = min(rng.randint(1, 60), hold or N_ITEMS)
    row: dict = {"hold_after": hold, "after_answers": target}
    try:
        rc, err = sigterm_enhance_cli(ds.root, config, path, target, wait_s,
                                      extra_args=("--views", "txt"))
    except AssertionError as exc:  # ended (or stalled) before the signal: not a kill
        return {**row, "rc": "no kill", "error": str(exc)[:300]}
    finally:
        server.release()
        server.stop()
    return {**row, "rc": rc} if rc is not None else {**row, "rc": None, "stacks": err[-4000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wait-s", type=float, default=15.0, help="how long a stopped child may take")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = []
    for i in range(args.trials):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(trial(Path(tmp), rng, args.wait_s))
        rc = rows[-1]["rc"]
        print(f"trial {i + 1}/{args.trials}: {'HANG' if rc is None else rc}", flush=True)
    codes = Counter("hang" if r["rc"] is None else str(r["rc"]) for r in rows)
    print(f"{args.trials} kills: {dict(codes)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(provenance(
        what="SIGTERM on `dmesr enhance` at random moments", trials=args.trials,
        seed=args.seed, wait_s=args.wait_s, exit_codes=dict(codes),
        hangs=codes.get("hang", 0), runs=rows), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Does `kill` (SIGTERM) always stop `dmesr enhance`? Many kills at random moments.

    python benchmarks/sigterm_stress.py --trials 150

Each trial runs `dmesr enhance` on a synthetic 150-item dataset against a local fake
OpenAI-compatible server (half the trials hold every request after the 40th, as the test
suite does), sends SIGTERM once a random number (1-60) of answers is cached, and waits 15 s.
(Exit 0: the run finished before the signal.) A trial "hangs" when the child is still running then (it is dumped with SIGABRT, whose
traceback, via PYTHONFAULTHANDLER, is kept in the JSON). Writes
benchmarks/results/sigterm_stress.json with the exit codes and hangs counted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from dmesr.enhance.cache import cache_path
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.testing import RecordingServer, make_prepared
from dmesr.io import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "sigterm_stress.json"
N_ITEMS = 150


def wait_for_answers(child: subprocess.Popen, path: Path, target: int, rng: random.Random) -> None:
    deadline = time.monotonic() + 30
    while child.poll() is None and time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= target:
            return
        time.sleep(rng.uniform(0, 0.005))  # jitter: the signal lands at varied points


def trial(root: Path, rng: random.Random, wait_s: float) -> dict:
    ds = make_prepared(root / "data", n_items=N_ITEMS, with_image=[False] * N_ITEMS)
    hold = rng.choice([None, 40])
    server = RecordingServer(delay_s=rng.choice([0.0, 0.002, 0.01]), hold_after=hold).start()
    section = {"backend": "openai", "cache_dir": str(root / "cache"), "fsync_every": 5,
               "openai": {"base_urls": [server.base_url], "concurrency": 4}}
    config = root / "enhance.yaml"
    config.write_text(json.dumps({"enhance": section}))
    path = cache_path(EnhanceConfig.model_validate(section).cache_root(ds.root), "txt")
    child = subprocess.Popen(
        [sys.executable, "-m", "dmesr.cli", "enhance", "--data", str(ds.root), "--config",
         str(config), "--no-progress", "--views", "txt"],
        env={**os.environ, "PYTHONFAULTHANDLER": "1", "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE, text=True)
    target = rng.randint(1, 60)
    try:
        wait_for_answers(child, path, target, rng)
        child.send_signal(signal.SIGTERM)
        try:
            child.communicate(timeout=wait_s)
            return {"hold_after": hold, "after_answers": target, "rc": child.returncode}
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            _, err = child.communicate(timeout=wait_s)
            return {"hold_after": hold, "after_answers": target, "rc": None,
                    "stacks": err[-4000:]}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        server.release()
        server.stop()


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
        print(f"trial {i + 1}/{args.trials}: {'HANG' if rc is None else f'exit {rc}'}", flush=True)
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

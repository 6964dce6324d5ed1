"""What early stopping with a shorter patience would have chosen, replayed from run logs.

    python benchmarks/patience_replay.py runs/tune_bert4rec_ml100k --patience 10 20 50 100

A run trained with a long patience logs its validation NDCG@10 after every evaluation
(`log.jsonl`). Replaying the trainer's rule on that curve (a strictly better score resets
the counter; `patience` evaluations without one stop the run) gives, for each shorter
patience, the epoch the run would have stopped at and the validation score it would have
kept, with no extra training. Validation only: test metrics exist for the logged run's
best checkpoint alone. A patience longer than the one the run was trained with cannot be
replayed where the run stopped early; those cells print `n/a`. A `+` after the stop epoch:
the curve ends there (epoch cap, kill, or a run still training) before this patience
would have stopped it. `--smooth W` adds each run's best W-validation moving average and,
per variant (a run's parent folder), the seed means of both maxima: a lead that holds on
the moving average is not one lucky validation out of a long curve. Accepts run folders,
grid folders and archived results folders (any folder holding `log.jsonl` files). Writes
benchmarks/results/patience_replay_<name>.json.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from dmesr.io import read_json
from dmesr.report.plots import valid_curve

REPO = Path(__file__).resolve().parents[1]
METRIC = "valid.full.NDCG@10"


def replay(scores: list[float], patience: int) -> tuple[int, int, float, bool]:
    """(last index evaluated, best index, best score, stopped) under the trainer's rule."""
    best, best_i, bad = float("-inf"), -1, 0
    for i, score in enumerate(scores):
        if score > best:
            best, best_i, bad = score, i, 0
        else:
            bad += 1
            if bad >= patience:
                return i, best_i, best, True
    return len(scores) - 1, best_i, best, False


def read_run(run_dir: Path) -> dict:
    """Epochs, validation scores and the trained patience / stop reason of one run."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise SystemExit(f"{run_dir}: log.jsonl without config.yaml, not a run folder")
    epochs, scores = valid_curve(run_dir, METRIC)
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    return {"epochs": epochs, "scores": scores,
            "trained_patience": int(yaml.safe_load(config_path.read_text())["train"]["patience"]),
            "stopped": metrics.get("stopped")}


def replay_run(run: dict, patiences: list[int]) -> dict[int, dict | None]:
    """Per patience: stop epoch, best epoch and best validation score (None: unknown)."""
    out: dict[int, dict | None] = {}
    cut_early = run["stopped"] == "early stopping"
    for p in patiences:
        stop, best_i, best, stopped = replay(run["scores"], p)
        if not stopped and cut_early and p > run["trained_patience"]:
            out[p] = None
            continue
        out[p] = {"stop_epoch": run["epochs"][stop], "best_epoch": run["epochs"][best_i],
                  "valid_NDCG@10": best, "stopped_by_patience": stopped}
    return out


def best_moving_average(scores: list[float], window: int) -> float | None:
    """The best mean of `window` consecutive validations (None: a shorter curve)."""
    if len(scores) < window:
        return None
    return float(np.convolve(scores, np.ones(window) / window, mode="valid").max())


def variant_means(runs: dict[Path, tuple[float, float | None]]) -> dict[str, dict]:
    """Seed means per variant folder of (best validation, best moving average)."""
    groups: dict[Path, list[tuple[float, float | None]]] = defaultdict(list)
    for run_dir, pair in runs.items():
        groups[run_dir.parent].append(pair)
    out = {}
    for folder, pairs in sorted(groups.items()):
        smooth = [m for _, m in pairs]
        out["/".join(folder.parts[-2:])] = {
            "runs": len(pairs), "best_valid": float(np.mean([b for b, _ in pairs])),
            "best_moving_average": None if None in smooth else float(np.mean(smooth))}
    return out


def _cell(r: dict) -> str:
    ended = "" if r["stopped_by_patience"] else "+"
    return f"{r['valid_NDCG@10']:.4f} ({r['best_epoch']:>3d}/{r['stop_epoch']:>3d}{ended})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--patience", nargs="+", type=int, default=[10, 20, 50, 100])
    ap.add_argument("--name", default=None, help="JSON name (default: the first folder's name)")
    ap.add_argument("--smooth", type=int, default=None, metavar="W",
                    help="also the best W-validation moving average, per run and variant")
    args = ap.parse_args()
    runs = sorted({p.parent for f in args.folders for p in f.rglob("log.jsonl")})
    if not runs:
        raise SystemExit(f"no log.jsonl under {', '.join(map(str, args.folders))}")
    result = {}
    header = "run".ljust(44) + "".join(f"  p={p:<3d} valid (best/stop ep)".ljust(29)
                                       for p in args.patience)
    print(header + (f"  best ma{args.smooth}" if args.smooth else ""))
    maxima: dict[Path, tuple[float, float | None]] = {}
    for run_dir in runs:
        label = "/".join(run_dir.parts[-3:])
        run = read_run(run_dir)
        if not run["scores"]:  # e.g. a popularity run: nothing was validated
            print(f"{label}: no {METRIC} in its log.jsonl, skipped")
            continue
        rows = replay_run(run, args.patience)
        result[str(run_dir)] = {str(p): r for p, r in rows.items()}
        cells = [f"  {'n/a':<27s}" if r is None else f"  {_cell(r)}".ljust(29) for r in rows.values()]
        if args.smooth:
            smooth = best_moving_average(run["scores"], args.smooth)
            maxima[run_dir] = (max(run["scores"]), smooth)
            result[str(run_dir)]["best_moving_average"] = smooth
            cells.append("  n/a" if smooth is None else f"  {smooth:.4f}")
        print(label.ljust(44) + "".join(cells))
    summary = {}
    if args.smooth:
        summary = variant_means(maxima)
        print("\nvariant (seed means)".ljust(45) + f"best valid  best ma{args.smooth}")
        for variant, m in summary.items():
            smooth = "n/a" if m["best_moving_average"] is None else f"{m['best_moving_average']:.4f}"
            print(f"{variant} ({m['runs']} runs)".ljust(44) + f" {m['best_valid']:.4f}      {smooth}")
    name = args.name or args.folders[0].resolve().name
    out = REPO / "benchmarks" / "results" / f"patience_replay_{name}.json"
    out.write_text(json.dumps({"command": "python benchmarks/patience_replay.py "
                               + " ".join(map(str, args.folders))
                               + " --patience " + " ".join(map(str, args.patience))
                               + (f" --smooth {args.smooth}" if args.smooth else ""),
                               "metric": METRIC, "runs": result, "variants": summary}, indent=1))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()

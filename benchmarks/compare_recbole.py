"""dmesr vs RecBole 1.2.1: SASRec, BERT4Rec, GRU4Rec on the SAME prepared ML-100K split.

Installs nothing. RecBole runs in its own venv (docs/recbole_comparison.md); when its
python cannot import recbole, only the dmesr rows are produced and the table says so.

The prepared dataset is written as RecBole atomic files whose timestamp is each
interaction's position in the user's prepared sequence, so RecBole's leave-one-out
(order TO, group_by user) holds out exactly our valid and test items. Both systems rank
all items with the user's history excluded. Each (system, model, seed) runs in its own
process (so peak RSS is per run) under the same per-run time budget; results are cached
per run in benchmarks/results/compare_recbole_runs/ so the script can be resumed, and a
RecBole run itself resumes from its per-epoch state (recbole_worker.py --state). That
folder is not committed; the finished runs are, inside compare_recbole.json, and a fresh
checkout restores them from there, so it reruns nothing that was published and
`--cached-only` rebuilds the published table.

    python benchmarks/compare_recbole.py --budget-minutes 140 --seeds 2026,2027,2028 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = RESULTS / "compare_recbole_runs"  # one cached JSON (and state) per run
PUBLISHED = RESULTS / "compare_recbole.json"  # committed: the table and every finished run
MODELS = {"SASRec": "sasrec", "BERT4Rec": "bert4rec", "GRU4Rec": "gru4rec"}


def write_atomic(prepared: Path, folder: Path, name: str) -> Path:
    """RecBole .inter file from a prepared dataset, order-preserving timestamps."""
    sys.path.insert(0, str(REPO / "src"))
    from dmesr.data.dataset import PreparedDataset

    ds = PreparedDataset(prepared)
    inter = ds.interactions
    users = inter["user"].to_numpy()
    position = np.arange(len(users)) - np.searchsorted(users, users)  # rank within user
    path = folder / name / f"{name}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{p}" for u, i, p in zip(users, inter["item"].to_numpy(), position,
                                                    strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return folder


def recbole_available(python: str) -> bool:
    try:
        res = subprocess.run([python, "-c", "import recbole.config, recbole.data"],
                             capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def kept_notes(out: Path) -> list[str]:
    """The notes of an earlier table at `out` (a rerun without --note keeps them)."""
    try:
        return list(json.loads(out.read_text()).get("notes", []))
    except (OSError, ValueError):
        return []


def run_path(system: str, model: str, seed: int, budget: float | str, work: Path = WORK) -> Path:
    """Where one run's result is cached (`budget` "*" gives the glob over budgets)."""
    return work / f"{system}_{model}_seed{seed}_b{budget}.json"


def state_file(model: str, seed: int, budget: float) -> Path:
    """The worker's resume file: a RecBole run of hours spans sittings (deleted when done)."""
    return run_path("recbole", model, seed, budget).with_suffix(".state.npz")


def run_recbole(args: argparse.Namespace, model: str, seed: int, data: Path) -> dict:
    cmd = [args.recbole_python, str(REPO / "benchmarks" / "recbole_worker.py"),
           "--state", str(state_file(model, seed, args.budget_minutes)),
           "--data-path", str(data), "--dataset", "dmesr_ml100k", "--model", model,
           "--seed", str(seed), "--max-len", str(args.recbole_max_len),
           "--batch-size", str(args.batch_size), "--budget-minutes", str(args.budget_minutes),
           "--threads", str(args.threads)]
    # stderr is not captured: the worker's per-epoch progress lines reach the terminal
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=data)
    if res.returncode != 0:
        raise RuntimeError(f"RecBole {model} seed {seed} failed (its error is printed above)")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_dmesr(args: argparse.Namespace, model: str, seed: int) -> dict:
    out = WORK / "dmesr" / model / f"seed{seed}"
    cmd = [sys.executable, "-m", "dmesr.cli", "train", "--config",
           str(REPO / "configs" / "experiments" / f"{MODELS[model]}_ml100k.yaml"),
           "--out", str(out), "--overwrite", f"dataset.paths.prepared={args.prepared}",
           f"train.seed={seed}", f"train.max_minutes={args.budget_minutes}",
           f"train.threads={args.threads}", "train.progress=false", *args.dmesr_override]
    res = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if res.returncode != 0:
        raise RuntimeError(f"dmesr {model} seed {seed} failed:\n{res.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    cfg = (out / "config.yaml").read_text()
    return {
        "system": "dmesr", "model": model, "seed": seed,
        "test_full_NDCG@10": m["test.full.NDCG@10"], "test_full_HR@10": m["test.full.HR@10"],
        "valid_full_NDCG@10": m["valid.full.NDCG@10"], "s_per_epoch": m["train.s_per_epoch"],
        "epochs": m["train.epochs"], "best_epoch": m["train.best_epoch"],
        "time_to_best_s": m["train.time_to_best_s"], "wall_s": m["train.wall_s"],
        "peak_rss_mb": m["train.peak_rss_mb"], "stopped": m.get("stopped"), "config": cfg,
    }


def budget_of(path: Path) -> float:
    return float(path.stem.rsplit("_b", 1)[1])


def cached_run(work: Path, system: str, model: str, seed: int, budget: float) -> Path | None:
    """The cached run at `budget`, else the one with the longest budget (a RecBole run
    that needs hours may exist only at a shorter budget; its row then says so)."""
    exact = run_path(system, model, seed, budget, work)
    if exact.exists():
        return exact
    found = sorted(work.glob(run_path(system, model, seed, "*", work).name), key=budget_of)
    return found[-1] if found else None


def restore_published(published: Path, work: Path = WORK) -> int:
    """Write the runs recorded in a published compare_recbole.json back as per-run cache
    files (those not already cached); returns how many were restored."""
    if not published.exists():
        return 0
    restored = 0
    for run in json.loads(published.read_text()).get("runs", []):
        path = run_path(run["system"], run["model"], run["seed"], run["budget_minutes"], work)
        if not path.exists():
            write_json_atomic(path, run)
            restored += 1
    return restored


def cached(path: Path, fn, *a) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    result = fn(*a)
    write_json_atomic(path, result)
    return result


def write_json_atomic(path: Path, obj: dict) -> None:
    """A cache file is whole or absent: a kill mid-write must not leave broken JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


KEYS = ["test_full_NDCG@10", "test_full_HR@10", "valid_full_NDCG@10", "s_per_epoch", "epochs",
        "best_epoch", "time_to_best_s", "peak_rss_mb"]


def aggregate(runs: list[dict]) -> dict:
    row = {"system": runs[0]["system"], "model": runs[0]["model"], "seeds": len(runs)}
    for key in KEYS:
        values = np.array([r[key] for r in runs], dtype=float)
        row[key] = float(values.mean())
        row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    # runs cached before the worker told early stopping from max epochs say both
    reasons = Counter(str(r.get("stopped")).replace("early stopping or max epochs",
                                                    "early stopping") for r in runs)
    row["stopped"] = [f"{why} ×{n}" if len(runs) > 1 else why
                      for why, n in sorted(reasons.items())]
    row["budget_minutes"] = sorted({r["budget_minutes"] for r in runs})
    return row


def print_table(rows: list[dict], budget: float) -> None:
    print(f"ML-100K leave-one-out, full ranking (history excluded); per-run budget "
          f"{budget} min; mean ± std over seeds")
    head = (f"{'system':8} {'model':9} {'seeds':>5} {'NDCG@10':>16} {'HR@10':>16} "
            f"{'s/epoch':>8} {'epochs':>7} {'best ep':>7} {'t→best s':>9} {'RSS MB':>7} "
            f"{'budget':>7}  stopped")
    print(head)
    for r in rows:
        print(f"{r['system']:8} {r['model']:9} {r['seeds']:>5} "
              f"{r['test_full_NDCG@10']:.4f} ± {r['test_full_NDCG@10_std']:.4f} "
              f"{r['test_full_HR@10']:.4f} ± {r['test_full_HR@10_std']:.4f} "
              f"{r['s_per_epoch']:8.2f} {r['epochs']:7.1f} {r['best_epoch']:7.1f} "
              f"{r['time_to_best_s']:9.1f} {r['peak_rss_mb']:7.0f} "
              f"{'/'.join(f'{b:g}' for b in r['budget_minutes']):>7}  {', '.join(r['stopped'])}")


def markdown_table(rows: list[dict]) -> str:
    """The table as the README and docs/recbole_comparison.md show it."""
    lines = ["| system | model | seeds | test NDCG@10 | test HR@10 | s/epoch | epochs (best) "
             "| time to best | peak RSS | budget | stopped |",
             "|---|---|---|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        def metric(key: str, r: dict = r) -> str:
            return (f"{r[key]:.4f} ± {r[key + '_std']:.4f}" if r["seeds"] > 1
                    else f"{r[key]:.4f}")
        stopped = ", ".join(r["stopped"])
        lines.append(
            f"| {'dmesr' if r['system'] == 'dmesr' else 'RecBole'} | {r['model']} "
            f"| {r['seeds']} | {metric('test_full_NDCG@10')} | {metric('test_full_HR@10')} "
            f"| {r['s_per_epoch']:.1f} | {r['epochs']:.3g} ({r['best_epoch']:.3g}) "
            f"| {r['time_to_best_s'] / 60:.1f} min | {r['peak_rss_mb']:,.0f} MB "
            f"| {'/'.join(f'{b:g}' for b in r['budget_minutes'])} min | {stopped} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepared", type=Path, default=REPO / "data" / "ml100k")
    ap.add_argument("--models", default="SASRec,BERT4Rec,GRU4Rec")
    ap.add_argument("--seeds", default="2026,2027,2028")
    ap.add_argument("--systems", default="dmesr,recbole")
    ap.add_argument("--budget-minutes", type=float, default=10.0,
                    help="wall-clock training budget per run (both systems)")
    ap.add_argument("--batch-size", type=int, default=2048, help="RecBole train batch size")
    ap.add_argument("--recbole-max-len", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recbole-python", default=str(REPO / ".venv-recbole" / "bin" / "python"))
    ap.add_argument("--dmesr-override", nargs="*", default=[],
                    help="dotted overrides for every dmesr run")
    ap.add_argument("--note", action="append", default=[],
                    help="free-text caveat stored in the JSON (repeatable; replaces the notes "
                         "already there, which are kept when no --note is given)")
    ap.add_argument("--cached-only", action="store_true",
                    help="only tabulate cached runs (run nothing); a run missing at this budget "
                         "falls back to its longest cached budget")
    ap.add_argument("--markdown", action="store_true",
                    help="print the table as Markdown (as in the README)")
    ap.add_argument("--out", type=Path, default=PUBLISHED)
    args = ap.parse_args()
    args.prepared = args.prepared.resolve()
    systems = args.systems.split(",")
    notes = list(args.note) or kept_notes(args.out)
    for published in dict.fromkeys([PUBLISHED, args.out]):
        if restored := restore_published(published):
            print(f"restored {restored} finished runs from {published}", flush=True)
    if "recbole" in systems and not args.cached_only and not recbole_available(
            args.recbole_python):
        systems.remove("recbole")
        notes.append(f"RecBole not importable with {args.recbole_python}: recbole rows skipped")
    data = None
    if "recbole" in systems and not args.cached_only:
        data = write_atomic(args.prepared, WORK / "atomic", "dmesr_ml100k")
    rows, raw = [], []
    for model in args.models.split(","):
        for system in systems:
            runs = []
            for seed in (int(s) for s in args.seeds.split(",")):
                path = run_path(system, model, seed, args.budget_minutes)
                if args.cached_only:
                    path = cached_run(WORK, system, model, seed, args.budget_minutes)
                    if path is None:
                        continue
                if system == "recbole":
                    runs.append(cached(path, run_recbole, args, model, seed, data))
                    state_file(model, seed, args.budget_minutes).unlink(missing_ok=True)
                else:
                    runs.append(cached(path, run_dmesr, args, model, seed))
                runs[-1]["budget_minutes"] = budget_of(path)
                print(f"  {system} {model} seed {seed}: NDCG@10 "
                      f"{runs[-1]['test_full_NDCG@10']:.4f}", flush=True)
            if runs:
                raw += runs
                rows.append(aggregate(runs))
    if args.markdown:
        print(markdown_table(rows))
    else:
        print_table(rows, args.budget_minutes)
    for note in notes:
        print(note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "protocol": "ML-100K (5-core prepared split), leave-one-out, full ranking over all "
                    "items with history excluded, test NDCG@10/HR@10 of the best-validation "
                    "checkpoint", "budget_minutes_per_run": args.budget_minutes,
        "recbole_batch_size": args.batch_size, "recbole_max_len": args.recbole_max_len,
        "threads": args.threads, "notes": notes, "rows": rows,
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in raw],
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Read an experiment's run directories (<out>/<backbone>/<variant>/seed<N>) into a table.

Everything comes from the run directories themselves (metrics.json, run.json, per_user/,
log.jsonl); `<out>/experiment.json`, written by `dmesr experiment`, only adds the grid's
order, labels and the command line, so a report can always be rebuilt from the runs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from dmesr.errors import DmesrError
from dmesr.io import read_json
from dmesr.report.archive import FINISHED

META_NAME = "experiment.json"
# Columns every results.csv starts with (the brief's contract), then everything else.
FRONT = ["dataset", "backbone", "variant", "seed", "kind", "valid_full_NDCG@10",
         "test_full_NDCG@10", "test_full_HR@10", "test_sampled_NDCG@10", "test_sampled_HR@10"]
TRAIN_COLS = ["best_epoch", "epochs", "s_per_epoch", "time_to_best_s", "wall_s", "peak_rss_mb"]
_SEED = re.compile(r"^seed(-?\d+)$")


@dataclass(frozen=True)
class Run:
    backbone: str
    variant: str
    seed: int
    path: Path
    metrics: dict[str, Any]

    @cached_property
    def record(self) -> dict[str, Any]:
        """The run's run.json ({} when it has none)."""
        path = self.path / "run.json"
        return read_json(path) if path.is_file() else {}


@dataclass
class Experiment:
    out: Path
    runs: list[Run]
    meta: dict[str, Any]

    @property
    def grid(self) -> dict[str, Any]:
        return self.meta.get("grid", {})

    def dataset(self) -> str:
        if self.grid.get("dataset"):
            return str(self.grid["dataset"])
        names = {r.record["dataset"]["name"] for r in self.runs}
        return "+".join(sorted(names))

    def backbones(self) -> list[str]:
        return _ordered({r.backbone for r in self.runs}, list(self.grid.get("backbones", {})))

    def variants(self) -> list[str]:
        return _ordered({r.variant for r in self.runs}, self.grid_variants())

    def grid_variants(self) -> list[str]:
        out: list[str] = []
        for key in ("variants", "ablations"):
            out += [v for v in self.grid.get(key, []) if v not in out]
        return out

    def ablations(self) -> set[str]:
        main = set(self.grid.get("variants", []))
        return {v for v in self.grid.get("ablations", []) if v not in main}

    def protocols(self) -> list[str]:
        return list(self.grid.get("protocols", ["full", "sampled"]))

    def compare_to(self) -> list[str]:
        return list(self.grid.get("compare_to", ["id", "llmesr"]))

    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})


def _ordered(present: set[str], preferred: list[str]) -> list[str]:
    """Grid order first, then anything else found on disk, alphabetically."""
    return [x for x in preferred if x in present] + sorted(present - set(preferred))


def load_experiment(out: Path) -> Experiment:
    out = Path(out)
    if not out.is_dir():
        raise DmesrError(f"{out}: no such experiment directory")
    runs = []
    for metrics in sorted(out.glob(FINISHED)):
        run = metrics.parent
        m = _SEED.match(run.name)
        if m:
            runs.append(Run(run.parent.parent.name, run.parent.name, int(m.group(1)), run,
                            read_json(metrics)))
    if not runs:
        raise DmesrError(f"{out}: no finished runs (<backbone>/<variant>/seed<N>/metrics.json)")
    meta = read_json(out / META_NAME) if (out / META_NAME).is_file() else {}
    return Experiment(out, runs, meta)


def column(key: str) -> str:
    """metrics.json key -> CSV column: dots become underscores, `train.` is dropped."""
    return key[len("train."):] if key.startswith("train.") else key.replace(".", "_")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def results_frame(exp: Experiment) -> pd.DataFrame:
    """One row per run, FRONT columns first; rows in grid order (backbone, variant, seed)."""
    dataset, abl = exp.dataset(), exp.ablations()
    rows, keys = [], {}
    for run in exp.runs:
        row: dict[str, Any] = {"dataset": dataset, "backbone": run.backbone,
                               "variant": run.variant, "seed": run.seed,
                               "kind": "ablation" if run.variant in abl else "main"}
        for key, value in run.metrics.items():
            num = _number(value)
            if num is not None:
                row[column(key)] = num
                keys.setdefault(column(key), None)
        row["stopped"] = run.metrics.get("stopped") or ""
        row["run_dir"] = str(run.path.relative_to(exp.out))
        rows.append(row)
    rest = [k for k in keys if k not in FRONT and k not in TRAIN_COLS]
    cols = FRONT + [c for c in TRAIN_COLS if c in keys] + rest + ["stopped", "run_dir"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    b_order = {b: i for i, b in enumerate(exp.backbones())}
    v_order = {v: i for i, v in enumerate(exp.variants())}
    df["_b"], df["_v"] = df.backbone.map(b_order), df.variant.map(v_order)
    return df.sort_values(["_b", "_v", "seed"]).drop(columns=["_b", "_v"]).reset_index(drop=True)


@dataclass
class FeatureFiles:
    """Which feature files an experiment's runs read (run.json `features`)."""

    views: dict[str, dict[str, int]]  # view -> features sha256 -> runs
    unrecorded: int  # runs from before runs recorded their features
    none: int  # runs that read no features (ID-only, Pop)


def feature_files(exp: Experiment) -> FeatureFiles:
    views: dict[str, dict[str, int]] = {}
    unrecorded = none = 0
    for run in exp.runs:
        record = run.record
        encoder = record.get("comparable_config", {}).get("model", {}).get("encoder", {})
        if "features" not in record and encoder.get("type", "dmesr") == "dmesr":
            unrecorded += 1
        elif record.get("features") is None:  # ID-only and Pop read none, recorded or not
            none += 1
        else:
            for name, files in record["features"]["views"].items():
                shas = views.setdefault(name, {})
                shas[files["features_sha256"]] = shas.get(files["features_sha256"], 0) + 1
    return FeatureFiles(dict(sorted(views.items())), unrecorded, none)


@dataclass
class StoppingRules:
    """The early-stopping patience of an experiment's runs, per backbone, how many runs
    went on from an earlier stop under a larger one (run.json `continued`), and which
    ended at their epoch cap or time budget with patience left (their best may lie beyond)."""

    patience: dict[str, Counter[int]]
    continued: int
    cut_short: list[str] = field(default_factory=list)


def stopping_rules(exp: Experiment) -> StoppingRules:
    patience: dict[str, Counter[int]] = {}
    continued, cut_short = 0, []
    for run in exp.runs:
        trained = run.metrics.get("train.epochs", 0) > 0  # not popularity and the like
        value = run.record.get("comparable_config", {}).get("train", {}).get("patience")
        if value is not None and trained:
            patience.setdefault(run.backbone, Counter())[int(value)] += 1
        continued += bool(run.record.get("continued"))
        # None: the epoch cap ended it; a run without the field predates the record
        if trained and run.metrics.get("stopped", "unrecorded") in (None, "time budget"):
            cut_short.append(f"{run.backbone}/{run.variant}/seed{run.seed}")
    return StoppingRules({b: patience[b] for b in exp.backbones() if b in patience}, continued,
                         cut_short)


def mean_std(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; 0 for one seed) and n of the non-missing values."""
    v = values.dropna().astype(float)
    if v.empty:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)

"""Paired per-user significance of a variant against a baseline variant (same backbone).

Per-user test NDCG@10 (full ranking) is averaged over the seeds both variants finished,
then a two-sided Wilcoxon signed-rank test runs over users. Averaging (rather than
pooling users × seeds) keeps one pair per user, so the pairs stay independent and n is
the number of users, not inflated by the number of seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from dmesr.eval.compare import per_user
from dmesr.io import read_json
from dmesr.report.collect import Experiment, Run

SPLIT, MODE, METRIC = "test", "full", "NDCG@10"
METHOD = ("two-sided Wilcoxon signed-rank test on per-user test NDCG@10 (full ranking); "
          "each user's value is averaged over the seeds both variants finished, so n = users")


@dataclass(frozen=True)
class Test:
    variant: str
    baseline: str
    p: float
    diff: float  # mean per-user difference (variant − baseline)
    n_users: int
    seeds: tuple[int, ...]


def _per_user_mean(runs: list[Run]) -> np.ndarray:
    cols = [per_user(r.path, SPLIT, MODE) for r in runs]
    return np.mean([m[:, names.index(METRIC)] for m, names in cols], axis=0)


def _hash(run: Run) -> str:
    return str(read_json(run.path / "run.json")["dataset"]["content_hash"])


def paired(exp: Experiment, backbone: str, variant: str, baseline: str) -> Test | None:
    """None when the two share no seed, are the same variant, or lack per-user vectors."""
    if variant == baseline:
        return None
    by_seed = {(r.variant, r.seed): r for r in exp.runs if r.backbone == backbone}
    seeds = tuple(sorted(s for v, s in by_seed if v == variant and (baseline, s) in by_seed))
    if not seeds:
        return None
    a_runs = [by_seed[(variant, s)] for s in seeds]
    b_runs = [by_seed[(baseline, s)] for s in seeds]
    if len({_hash(r) for r in a_runs + b_runs}) != 1:
        return None  # different datasets: no pairing is meaningful
    try:
        a, b = _per_user_mean(a_runs), _per_user_mean(b_runs)
    except (OSError, ValueError):
        return None
    diff = a - b
    p = 1.0 if np.all(diff == 0) else float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)
    return Test(variant, baseline, p if not math.isnan(p) else 1.0, float(diff.mean()),
                len(diff), seeds)


def all_tests(exp: Experiment) -> dict[tuple[str, str, str], Test]:
    """(backbone, variant, baseline) -> Test for every present baseline in compare_to."""
    out = {}
    for backbone in exp.backbones():
        present = {r.variant for r in exp.runs if r.backbone == backbone}
        for baseline in [b for b in exp.compare_to() if b in present]:
            for variant in exp.variants():
                if variant in present and (t := paired(exp, backbone, variant, baseline)):
                    out[(backbone, variant, baseline)] = t
    return out

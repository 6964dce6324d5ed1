"""results.md: command, protocol, per-backbone tables (mean ± std, best in bold, p-values)
and the long-tail group tables."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dmesr.report.collect import (
    Experiment,
    FeatureFiles,
    StoppingRules,
    feature_files,
    mean_std,
    stopping_rules,
)
from dmesr.report.significance import METHOD, Test

GROUPS = [("tail_user", "tail users"), ("head_user", "head users"),
          ("tail_item", "tail items"), ("head_item", "head items")]


def metric_columns(protocols: list[str]) -> list[tuple[str, str]]:
    """(CSV column, header) of the quality metrics shown; all higher-is-better."""
    cols = [("valid_full_NDCG@10", "valid NDCG@10 full")]
    if "full" in protocols:
        cols += [(f"test_full_{m}", "NDCG@10 full" if m == "NDCG@10" else f"{m} full")
                 for m in ("NDCG@10", "HR@10", "NDCG@20", "HR@20", "MRR@10")]
    if "sampled" in protocols:
        cols += [(f"test_sampled_{m}", f"{m} sampled") for m in ("NDCG@10", "HR@10")]
    return cols


def fmt(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "–"
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def fmt_p(test: Test | None) -> str:
    if test is None:
        return "–"
    arrow = "↑" if test.diff > 0 else "↓" if test.diff < 0 else "="
    p = f"{test.p:.1e}" if test.p < 1e-3 else f"{test.p:.3f}"
    return f"{p} {arrow}" + (" *" if test.p < 0.05 else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _stat_grid(df: pd.DataFrame, variants: list[str], cols: list[str]) -> dict:
    return {(v, c): mean_std(df.loc[df.variant == v, c]) if c in df else (math.nan, 0.0, 0)
            for v in variants for c in cols}


def _bolded(stats: dict, variants: list[str], cols: list[str]) -> dict[tuple[str, str], str]:
    """Formatted cells with the best mean of each column in bold (ties all bold)."""
    out = {}
    for c in cols:
        means = [stats[(v, c)][0] for v in variants if not math.isnan(stats[(v, c)][0])]
        best = max(means) if means else math.nan
        for v in variants:
            text = fmt(*stats[(v, c)])
            out[(v, c)] = f"**{text}**" if stats[(v, c)][0] == best and len(means) > 1 else text
    return out


def backbone_table(exp: Experiment, df: pd.DataFrame, backbone: str,
                   tests: dict[tuple[str, str, str], Test]) -> list[str]:
    sub = df[df.backbone == backbone]
    variants = [v for v in exp.variants() if v in set(sub.variant)]
    mcols = metric_columns(exp.protocols())
    cols = [c for c, _ in mcols]
    cells = _bolded(_stat_grid(sub, variants, cols), variants, cols)
    baselines = [b for b in exp.compare_to() if b in variants]
    header = (["variant", "seeds"] + [h for _, h in mcols] + [f"p vs {b}" for b in baselines]
              + ["s/epoch", "time to best (s)", "best epoch"])
    abl = exp.ablations()
    rows = []
    for v in variants:
        vs = sub[sub.variant == v]
        rows.append(
            [f"{v} (ablation)" if v in abl else v, str(len(vs))]
            + [cells[(v, c)] for c in cols]
            + [fmt_p(tests.get((backbone, v, b))) for b in baselines]
            + [_plain(vs, "s_per_epoch", 2), _plain(vs, "time_to_best_s", 1),
               _plain(vs, "best_epoch", 1)])
    return _table(header, rows)


def _plain(df: pd.DataFrame, col: str, digits: int) -> str:
    if col not in df:
        return "–"
    mean, std, n = mean_std(df[col])
    if n == 0:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def group_table(exp: Experiment, df: pd.DataFrame, backbone: str) -> list[str]:
    sub = df[df.backbone == backbone]
    variants = [v for v in exp.variants() if v in set(sub.variant)]
    cols = [f"test_full_{g}_NDCG@10" for g, _ in GROUPS]
    cells = _bolded(_stat_grid(sub, variants, cols), variants, cols)
    header = ["variant"]
    for g, label in GROUPS:
        n = sub.get(f"test_full_{g}_n_users")
        header.append(f"{label} (n={int(n.iloc[0])})" if n is not None and len(n) else label)
    abl = exp.ablations()
    return _table(header, [[f"{v} (ablation)" if v in abl else v] + [cells[(v, c)] for c in cols]
                           for v in variants])


def protocol_lines(exp: Experiment, df: pd.DataFrame) -> list[str]:
    first = exp.runs[0].metrics
    seeds = ", ".join(str(s) for s in exp.seeds())
    lines = [
        f"- Evaluation: {first.get('protocol', 'leave-one-out (protocol text missing)')}.",
        "- Model selection and early stopping on validation NDCG@10 (full ranking); test "
        "metrics are those of the best-validation checkpoint.",
        f"- Seeds: {seeds}; each cell is mean ± sample std (ddof = 1) over its seeds "
        "(`seeds` column); one seed shows the value alone.",
        "- **Bold**: best mean in the column within the table (all these metrics are "
        "higher-is-better).",
        f"- Significance: {METHOD}; baseline = the same backbone's "
        + " / ".join(f"`{b}`" for b in exp.compare_to())
        + " variant; ↑/↓ = variant better/worse on average; * p < 0.05 (not corrected for "
        "multiple comparisons).",
    ]
    if "groups_head_user_min_train_len" in df:
        g = df.iloc[0]
        lines.append(
            f"- Long-tail groups: head users = the {g.get('groups_head_user_frac', 0.2):.0%} "
            f"with the longest training sequences (≥ {g['groups_head_user_min_train_len']:g} "
            f"items), the rest tail; head items = the top "
            f"{g.get('groups_head_item_frac', 0.2):.0%} by training popularity "
            f"(≥ {g['groups_head_item_min_train_count']:g} interactions), grouped by the "
            "test target item.")
    return lines + stopping_lines(stopping_rules(exp)) + feature_lines(feature_files(exp))


def stopping_lines(rules: StoppingRules) -> list[str]:
    """Each backbone's patience, and a warning when one backbone's runs used several."""
    if not rules.patience:
        return []
    per_backbone = ", ".join(f"{b} {'/'.join(str(p) for p in sorted(c))}"
                             for b, c in rules.patience.items())
    line = f"- Early stopping patience (validations without improvement): {per_backbone}"
    if rules.continued:
        line += (f"; {rules.continued} runs went on from an earlier stop under a larger "
                 "patience or epoch count (run.json `continued`; the same runs epoch for epoch)")
    lines = [line + "."]
    for backbone, counts in rules.patience.items():
        if len(counts) > 1:
            parts = ", ".join(f"{p} ({n} runs)" for p, n in sorted(counts.items()))
            lines.append(f"- **Warning: {backbone} runs stopped under different patience**: "
                         f"{parts}; the longer patience may favour its variants.")
    if cut := rules.cut_short:
        shown = ", ".join(cut[:6]) + (f" and {len(cut) - 6} more" if len(cut) > 6 else "")
        lines.append(f"- **Warning: {len(cut)} runs ended at their epoch cap or time budget "
                     f"with patience left** ({shown}): their best epoch may lie beyond it; a "
                     "larger `train.epochs` lets them go on from their last checkpoint.")
    return lines


def feature_lines(files: FeatureFiles) -> list[str]:
    """What the runs read from the feature store, and a warning when they disagree."""
    if not files.views:
        return ([f"- Feature files: not recorded by {files.unrecorded} runs (made before runs "
                 "recorded them)."] if files.unrecorded else [])
    same = ", ".join(f"`{v}` {next(iter(shas))[:12]}" for v, shas in files.views.items()
                     if len(shas) == 1)
    lines = [f"- Feature files read (sha256 of each view's features, from run.json): "
             f"{same or 'see the warnings below'}"
             + (f"; {files.unrecorded} runs predate this record" if files.unrecorded else "")
             + (f"; {files.none} runs read none" if files.none else "") + "."]
    for view, shas in files.views.items():
        if len(shas) > 1:
            parts = ", ".join(f"{sha[:12]} ({n} runs)" for sha, n in shas.items())
            lines.append(f"- **Warning: runs read different `{view}` files**: {parts}; "
                         "their numbers are not comparable.")
    return lines


def _relative(path: Path, cwd: str | None) -> Path:
    """`path` relative to the working directory the commands ran in, when inside it."""
    try:
        return Path(path).resolve().relative_to(Path(cwd).resolve()) if cwd else Path(path)
    except ValueError:
        return Path(path)


def results_markdown(exp: Experiment, df: pd.DataFrame, tests: dict[tuple[str, str, str], Test],
                     report_command: str | None, plots: list[str]) -> str:
    """`report_command` None: written by `dmesr experiment` itself (the command above)."""
    meta = exp.meta
    commands = meta.get("commands") or ([meta["command"]] if meta.get("command") else [])
    lines = [f"# Results: {exp.dataset()}" + (f" ({exp.grid['name']})" if "name" in exp.grid
                                                else ""), ""]
    if len(commands) == 1:
        lines.append(f"Runs produced by: `{commands[0]}`")
    elif commands:  # resumed or run piecewise with --only: every invocation, in order
        lines += ["Runs produced by (in order):", ""] + [f"- `{c}`" for c in commands]
        lines.append("")
    else:
        lines.append(f"Runs found in `{exp.out}` (no experiment.json: command unknown)")
    if meta.get("cwd"):
        lines.append(f"(working directory `{meta['cwd']}`)")
    lines.append("")
    out = _relative(exp.out, meta.get("cwd"))
    lines.append(f"Report written by: `{report_command}`" if report_command else
                 f"Report written by the same command; rebuild it from the run directories "
                 f"with `dmesr report {out}`")
    lines += ["", "## Protocol", ""]
    lines += protocol_lines(exp, df)
    for backbone in exp.backbones():
        lines += ["", f"## {backbone}", "", *backbone_table(exp, df, backbone, tests)]
        lines += ["", f"### {backbone}: long-tail groups (test NDCG@10, full ranking)", ""]
        lines += group_table(exp, df, backbone)
    lines += _failures(exp)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _failures(exp: Experiment) -> list[str]:
    """Grid cells without results: failed ones with their error and log, then the rest."""
    done = {f"{r.backbone}/{r.variant}/seed{r.seed}" for r in exp.runs}
    missing = [c for c in exp.meta.get("cells", []) if c["key"] not in done]
    if not missing:
        return []
    out = ["", "## Missing cells", ""]
    for c in (c for c in missing if c.get("status") == "failed"):
        log = f" — log: `{c['log']}`" if c.get("log") else ""
        out.append(f"- failed `{c['key']}`" + (f": {c['error']}" if c.get("error") else "")
                   + log)
    rest = [c["key"] for c in missing if c.get("status") != "failed"]
    if rest:
        out.append(f"- not run yet or interrupted ({len(rest)}): "
                   + ", ".join(f"`{k}`" for k in rest))
    return out

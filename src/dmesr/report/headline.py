"""One table across datasets: test NDCG@10 (full ranking) per backbone x variant.

Reads what `dmesr report` wrote (`results.csv`, `significance.json`) in each results
folder, so it needs no run directories: `dmesr report --headline results/ml100k
--headline results/ml100k_posters`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dmesr.errors import DmesrError
from dmesr.report.collect import mean_std
from dmesr.report.tables import fmt

METRIC = "test_full_NDCG@10"


PDiff = tuple[float, float | None]  # p, mean difference variant - baseline


def _load(folder: Path) -> tuple[pd.DataFrame, dict[tuple[str, str, str], PDiff]]:
    csv, sig = folder / "results.csv", folder / "significance.json"
    if not csv.is_file():
        raise DmesrError(f"{csv}: not found; run `dmesr report` for that experiment first")
    df = pd.read_csv(csv)
    tests = json.loads(sig.read_text())["tests"] if sig.is_file() else []
    p = {(t["backbone"], t["variant"], t["baseline"]): (t["p"], t.get("diff")) for t in tests}
    return df[df["kind"] == "main"], p


def _mark(name: str, test: PDiff) -> str:
    """'id p=0.01* ↑': p, * below 0.05, and whether the variant is better (↑) or worse."""
    p, diff = test
    arrow = "" if diff is None or diff == 0 else " ↑" if diff > 0 else " ↓"
    return f"{name} p={p:.2g}{'*' if p < 0.05 else ''}{arrow}"


def _cell(values: pd.Series, p_id: PDiff | None, p_llmesr: PDiff | None) -> str:
    mean, std, n = mean_std(values)
    text = fmt(mean, std, n)
    marks = [_mark(name, t) for name, t in (("id", p_id), ("llmesr", p_llmesr)) if t is not None]
    seeds = "" if n == 3 else f" [{n} seed{'s' if n > 1 else ''}]"
    return text + (f" ({'; '.join(marks)})" if marks else "") + seeds


def headline_table(folders: list[Path]) -> str:
    """Markdown: rows backbone/variant, one column per dataset (mean ± std over seeds)."""
    loaded = {f: _load(f) for f in folders}
    names = {f: str(df["dataset"].iloc[0]) if len(df) else f.name for f, (df, _) in loaded.items()}
    keys: list[tuple[str, str]] = []
    for df, _ in loaded.values():
        for key in df[["backbone", "variant"]].itertuples(index=False, name=None):
            if key not in keys:
                keys.append(key)
    lines = ["| backbone | variant | " + " | ".join(names[f] for f in folders) + " |",
             "|---|---|" + "---:|" * len(folders)]
    for backbone, variant in keys:
        cells = []
        for f in folders:
            df, p = loaded[f]
            rows = df[(df["backbone"] == backbone) & (df["variant"] == variant)]
            cells.append(_cell(rows[METRIC], p.get((backbone, variant, "id")),
                               p.get((backbone, variant, "llmesr"))) if len(rows) else "–")
        lines.append(f"| {backbone} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

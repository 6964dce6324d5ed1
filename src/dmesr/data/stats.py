"""Dataset statistics: computed once at preparation, printed as a table and saved."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dmesr.data.prepare import Prepared
    from dmesr.data.schema import RawData
    from dmesr.errors import ErrorPolicy

QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def compute_stats(prepared: Prepared, raw: RawData, policy: ErrorPolicy) -> dict[str, Any]:
    inter = prepared.interactions
    n_users, n_items, n = len(prepared.users), len(prepared.items), len(inter)
    user = inter["user"].to_numpy()
    ts = inter["timestamp"].to_numpy()
    lengths = np.bincount(user, minlength=n_users + 1)[1:]
    item_pop = np.bincount(inter["item"].to_numpy(), minlength=n_items + 1)[1:]
    status = prepared.items["image_status"].to_numpy(dtype=str)
    has_image = status == "ok"
    inter_with_image = float(has_image[inter["item"].to_numpy() - 1].mean()) if n else 0.0
    ties = int(((user[1:] == user[:-1]) & (ts[1:] == ts[:-1])).sum())
    text_cov = {
        f: int(prepared.items[f].notna().sum()) for f in prepared.text_fields
    }
    return {
        "users": int(n_users),
        "items": int(n_items),
        "interactions": int(n),
        "density": float(n / (n_users * n_items)) if n_users and n_items else 0.0,
        "seq_length": {f"q{int(q * 100)}": float(np.quantile(lengths, q)) for q in QUANTILES}
        | {"mean": float(lengths.mean())},
        "item_popularity": {"median": float(np.median(item_pop)), "max": int(item_pop.max()),
                            "items_le_5": int((item_pop <= 5).sum())},
        "timestamp_ms": {"min": int(ts.min()), "max": int(ts.max())},
        "timestamp_ties": ties,
        "images": {
            "ok": int(has_image.sum()),
            "missing": int((status == "missing").sum()),
            "unreadable": int((status == "unreadable").sum()),
            "none": int((status == "none").sum()),
            "item_coverage": float(has_image.mean()) if n_items else 0.0,
            "interaction_coverage": inter_with_image,
        },
        "text_coverage": text_cov,
        "negatives": {"per_user": int(prepared.negatives["test"].shape[1]),
                      "users_short": int(prepared.short_negative_users)},
        "rejected_records": int(policy.n_rejected),
        "kcore_iterations": int(prepared.kcore_iterations),
        "funnel": prepared.funnel.steps,
        "raw_interactions": len(raw.interactions),
    }


def stats_markdown(stats: dict[str, Any], name: str) -> str:
    img = stats["images"]
    sl = stats["seq_length"]
    rows = [
        ("users", f"{stats['users']:,}"),
        ("items", f"{stats['items']:,}"),
        ("interactions", f"{stats['interactions']:,}"),
        ("density", f"{stats['density']:.4%}"),
        ("seq length min/median/mean/p90/max",
         f"{sl['q0']:.0f} / {sl['q50']:.0f} / {sl['mean']:.1f} / {sl['q90']:.0f} / {sl['q100']:.0f}"),
        ("timestamp ties (same user, same time)", f"{stats['timestamp_ties']:,}"),
        ("images ok / missing / unreadable / none",
         f"{img['ok']:,} / {img['missing']:,} / {img['unreadable']:,} / {img['none']:,}"),
        ("image coverage (items / interactions)",
         f"{img['item_coverage']:.1%} / {img['interaction_coverage']:.1%}"),
        ("rejected records", f"{stats['rejected_records']:,}"),
    ]
    rows += [(f"text '{k}' present", f"{v:,}") for k, v in stats["text_coverage"].items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"## {name}", "", f"| {'statistic'.ljust(width)} | value |",
             f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    lines += ["", "| step | interactions | users | items |", "|---|---|---|---|"]
    for s in stats["funnel"]:
        lines.append(f"| {s['step']} | {s['interactions']:,} | {s['users'] or ''} | "
                     f"{s['items'] or ''} |")
    return "\n".join(lines)

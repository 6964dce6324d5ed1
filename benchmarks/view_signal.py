"""How much next-item signal each stored feature view carries, before any training.

    python benchmarks/view_signal.py --data data/ml100k_posters

For every view in the dataset's feature store (MLLM descriptions, original text fields,
image-encoder features) it ranks the whole catalogue for each user by the mean cosine
similarity to the user's last `--last` items and reports validation NDCG@10 / HR@10 (full
ranking, history excluded, pessimistic ties: the protocol of SPEC §3). Random and
popularity rankings are printed alongside. A view that ranks no better than random
cannot help a recommender however it is fused; this is the first thing to check when an
MLLM view adds nothing. Writes benchmarks/results/view_signal_<dataset>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmesr.data.dataset import PreparedDataset
from dmesr.eval.evaluate import full_ranks, load_eval_split
from dmesr.eval.metrics import per_user_metrics
from dmesr.features.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]


class ContentKNN:
    """Scores = mean cosine similarity of every item to the user's last `last` items."""

    def __init__(self, features: np.ndarray, mask: np.ndarray, last: int) -> None:
        table = torch.from_numpy(np.asarray(features, dtype=np.float32)).clone()
        table[~torch.from_numpy(mask.astype(bool))] = 0.0  # missing rows score 0
        table[0] = 0.0
        self.table = torch.nn.functional.normalize(table, dim=1)
        self.n_items = table.shape[0] - 1
        self.last = last

    def full_sort_predict(self, batch: dict[str, Tensor]) -> Tensor:
        recent = batch["seq"][:, -self.last :]
        profile = self.table[recent].sum(1)  # padding rows are zero
        return profile @ self.table.T


class FixedScores:
    def __init__(self, scores: Tensor) -> None:
        self.scores, self.n_items = scores, scores.shape[0] - 1

    def full_sort_predict(self, batch: dict[str, Tensor]) -> Tensor:
        return self.scores[None].expand(batch["seq"].shape[0], -1)


def metrics(model: object, split: object) -> dict[str, float]:
    ranks = full_ranks(model, split, exclude_history=True)  # type: ignore[arg-type]
    per_user = per_user_metrics(ranks, [10], 10)
    return {"NDCG@10": float(per_user["NDCG@10"].mean()), "HR@10": float(per_user["HR@10"].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset with features")
    parser.add_argument("--last", type=int, default=5, help="recent history items per user")
    parser.add_argument("--split", choices=["valid", "test"], default="valid")
    args = parser.parse_args()
    ds = PreparedDataset(args.data)
    split = load_eval_split(ds, args.split, max_len=args.last)
    store = FeatureStore(ds.root / "features", ds)
    g = torch.Generator().manual_seed(0)
    rows = [
        {"view": "random", "coverage": 1.0, **metrics(FixedScores(torch.rand(ds.n_items + 1, generator=g)), split)},
        {"view": "popularity", "coverage": 1.0,
         **metrics(FixedScores(torch.from_numpy(ds.train_item_popularity().astype(np.float32))), split)},
    ]
    for name in sorted(store.views):
        view = store.load(name)
        model = ContentKNN(view.features, view.mask, args.last)
        rows.append({"view": name, "coverage": round(view.coverage, 4), **metrics(model, split)})
    print(f"{ds.name}: {args.split} NDCG@10 / HR@10 of a content-kNN over the last {args.last} items")
    for r in rows:
        print(f"  {r['view']:22s} cov {r['coverage']:6.1%}  NDCG@10 {r['NDCG@10']:.4f}  HR@10 {r['HR@10']:.4f}")
    out = REPO / "benchmarks" / "results" / f"view_signal_{ds.name}.json"
    out.write_text(json.dumps({"data": str(args.data), "split": args.split, "last": args.last,
                               "protocol": "full ranking, history excluded, pessimistic ties",
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Why sequence fusion stalls BERT4Rec-DMESR: are a user's [MASK] slots still distinct?

    python benchmarks/mask_slots.py --data data/ml100k_posters
Builds BERT4Rec-DMESR with sequence fusion on (untrained, seed 0), masks a batch of
training sequences as in training, and reports per view: the scale of item and [MASK]
inputs before and after the bidirectional sequence fusion, and the mean cosine between
two [MASK] slots of the same user once the learned positions are added. A cosine of 1
means the backbone cannot tell a user's masked slots apart, so it must predict the same
item for all of them. Writes benchmarks/results/mask_slots.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dmesr.config import load_config
from dmesr.data.dataset import PreparedDataset
from dmesr.models import build_model
from dmesr.train.config import RunConfig
from dmesr.train.trainer import train_sequences

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "configs/experiments/base_ml100k_posters.yaml",
           REPO / "configs/experiments/backbones/bert4rec.yaml"]


def slot_cosine(views: Tensor, pos: Tensor, masked: Tensor) -> float:
    """Mean pairwise cosine of each user's [MASK] slots, positions added; views [B, L, d].

    For unit vectors z_1..z_k the pairwise cosines sum to |Σ z|² - k, so no loop over users.
    """
    z = F.normalize(views + pos, dim=-1) * masked[..., None]
    k = masked.sum(1).to(views.dtype)
    pairs = k >= 2
    sums = z.sum(1).pow(2).sum(-1) - k
    return float((sums[pairs] / (k[pairs] * (k[pairs] - 1))).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset with features")
    parser.add_argument("--users", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    ds = PreparedDataset(args.data)
    cfg = load_config(RunConfig, [str(c) for c in CONFIGS],
                      ["model.encoder.type=dmesr", "model.encoder.dmesr.sequence_fusion=all"])
    model = build_model(cfg.model, ds.n_items, dataset=ds).eval()
    seqs = train_sequences(ds, cfg.model.max_len)[: args.users]
    seq = model.train_batch(seqs)["seq"]
    masked = seq == model.encoder.mask_id
    items = (seq > 0) & ~masked
    pos = model.backbone.pos.weight[-seq.shape[1]:].detach()
    with torch.no_grad():
        before = model.encoder(seq)
        after = model.encoder.sequence_mix(before, seq == 0, causal=False)
    rows = []
    for i, view in enumerate(model.encoder.cfg.out_views):
        row = {"view": view, "positions_std": round(float(pos.std()), 3)}
        for label, x in (("before", before[:, :, i]), ("after", after[:, :, i])):
            row[f"item_std_{label}"] = round(float(x[items].std()), 3)
            row[f"mask_std_{label}"] = round(float(x[masked].std()), 3)
            row[f"mask_slot_cosine_{label}"] = round(slot_cosine(x, pos, masked), 3)
        rows.append(row)
        print(f"{view:5s} item std {row['item_std_before']:.3f} -> {row['item_std_after']:.3f}"
              f"  [MASK] std {row['mask_std_before']:.3f} -> {row['mask_std_after']:.3f}"
              f"  [MASK]-slot cosine {row['mask_slot_cosine_before']:.3f}"
              f" -> {row['mask_slot_cosine_after']:.3f}")
    out = REPO / "benchmarks" / "results" / "mask_slots.json"
    out.write_text(json.dumps({"data": str(args.data), "users": int(seq.shape[0]),
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Does an item encoder learn under a backbone? Mean training loss over the first steps.

    python benchmarks/content_view_probe.py --data data/ml100k_posters --backbone bert4rec \\
        model.encoder.type=dmesr "model.encoder.dmesr.out_views=[text]"
Trains from seed 0 on fixed batches and prints the mean CE loss per window of steps next
to the uniform loss log(n_items): a run that stays near it has not started to learn.
Appends a row to benchmarks/results/content_view_probe.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from dmesr.config import load_config
from dmesr.data.dataset import PreparedDataset
from dmesr.models import build_model
from dmesr.train.config import RunConfig
from dmesr.train.trainer import train_sequences

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "content_view_probe.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset with features")
    parser.add_argument("--backbone", default="bert4rec", choices=["sasrec", "bert4rec", "gru4rec"])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("overrides", nargs="*", help="dotted settings, e.g. model.encoder.type=id")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = PreparedDataset(args.data)
    configs = [str(REPO / "configs/experiments/base_ml100k.yaml"),
               str(REPO / f"configs/experiments/backbones/{args.backbone}.yaml")]
    cfg = load_config(RunConfig, configs, args.overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, ds.n_items, dataset=ds).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)
    seqs = train_sequences(ds, cfg.model.max_len)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(args.steps):
        rows = torch.randint(0, seqs.shape[0], (cfg.train.batch_size,), generator=gen)
        loss = model.calculate_loss(model.train_batch(seqs[rows]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    windows = [round(sum(losses[i:i + args.window]) / len(losses[i:i + args.window]), 3)
               for i in range(0, args.steps, args.window)]
    row = {"data": str(args.data), "backbone": args.backbone, "overrides": args.overrides,
           "steps": args.steps, "window": args.window, "loss_windows": windows,
           "uniform_loss": round(math.log(ds.n_items), 3)}
    print(f"{args.backbone} {' '.join(args.overrides)}: {windows} (uniform {row['uniform_loss']})")
    rows_out = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": [*rows_out, row]}, indent=2) + "\n")


if __name__ == "__main__":
    main()

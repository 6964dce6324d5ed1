"""Training-step cost of DMESR variants relative to the ID-only backbone (same data, batch).

    python benchmarks/step_cost.py --data data/ml100k_posters
Times forward + backward + AdamW step on the same batches, interleaving the variants
round-robin so that load from other processes hits them alike; reports the median ms per
step and the ratio to ID-only. Writes benchmarks/results/step_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dmesr.config import load_config
from dmesr.data.dataset import PreparedDataset
from dmesr.models import build_model
from dmesr.train.config import RunConfig
from dmesr.train.trainer import train_sequences

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "step_cost.json"
VARIANTS = {
    "id": ["model.encoder.type=id"],
    "llmesr (2 views x 32, sequence fusion)": [
        "model.encoder.type=dmesr", "model.encoder.dmesr.out_views=[id, text]",
        "model.encoder.dmesr.mllm_views=[]", "model.encoder.dmesr.align_weight=0"],
    "dmesr default (3 views x 32, item + sequence fusion)": ["model.encoder.type=dmesr"],
    "dmesr item fusion only (3 views x 32)": ["model.encoder.type=dmesr",
                                              "model.encoder.dmesr.sequence_fusion=[]"],
    "dmesr no fusion (adapters, 3 views x 32)": [
        "model.encoder.type=dmesr", "model.encoder.dmesr.fusion=mean",
        "model.encoder.dmesr.sequence_fusion=[]"],
    "dmesr no fusion, no align": [
        "model.encoder.type=dmesr", "model.encoder.dmesr.fusion=mean",
        "model.encoder.dmesr.sequence_fusion=[]", "model.encoder.dmesr.align_weight=0"],
    "dmesr 3 views x 64": ["model.encoder.type=dmesr", "model.encoder.dmesr.view_dim=64"],
    "dmesr mean keys": ["model.encoder.type=dmesr", "model.encoder.dmesr.sequence_keys=mean"],
    "dmesr 3 views x 22": ["model.encoder.type=dmesr", "model.encoder.dmesr.view_dim=22"],
    "dmesr 3 views x 22, mean keys": ["model.encoder.type=dmesr",
                                      "model.encoder.dmesr.view_dim=22",
                                      "model.encoder.dmesr.sequence_keys=mean"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset with features")
    parser.add_argument("--config", nargs="+",
                        default=[str(REPO / "configs/experiments/sasrec_ml100k.yaml")])
    parser.add_argument("--set", nargs="*", default=[], help="dotted overrides for every variant")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="variants whose name starts with one of these "
                        "(id is always run: the ratios are to it)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON to write (default {RESULTS.relative_to(REPO)}; a partial run "
                             "with --only writes only where --out says)")
    args = parser.parse_args()
    variants = {n: o for n, o in VARIANTS.items()
                if n == "id" or not args.only or any(n.startswith(p) for p in args.only)}
    torch.set_num_threads(args.threads)
    ds = PreparedDataset(args.data)
    models, opts, cfg = {}, {}, None
    for name, over in variants.items():
        cfg = load_config(RunConfig, args.config, [*args.set, *over])
        torch.manual_seed(0)
        models[name] = build_model(cfg.model, ds.n_items, dataset=ds).train()
        opts[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-3)
    seqs = train_sequences(ds, cfg.model.max_len)
    bs = cfg.train.batch_size
    times: dict[str, list[float]] = {n: [] for n in variants}
    for step in range(args.steps + 3):
        batch_rows = torch.randint(0, seqs.shape[0], (bs,), generator=torch.Generator().manual_seed(step))
        for name, model in models.items():
            t0 = time.perf_counter()
            loss = model.calculate_loss(model.train_batch(seqs[batch_rows]))
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            if step >= 3:  # warm-up steps excluded
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["id"])
    rows = []
    for name, ts in times.items():
        ms = statistics.median(ts) * 1000
        rows.append({"variant": name, "ms_per_step": round(ms, 1),
                     "ratio_to_id": round(ms / (base * 1000), 2)})
        print(f"{name:52s} {ms:8.1f} ms/step  x{ms / (base * 1000):.2f}")
    out = args.out or (None if args.only else RESULTS)
    if out is None:
        print("partial run (--only): the full results file is left alone; pass --out to save")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": str(args.data), "batch_size": bs,
                               "max_len": cfg.model.max_len, "threads": args.threads,
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""`dmesr train`: train one model (or one per seed) from a RunConfig."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dmesr.config import load_config
from dmesr.data.dataset import PreparedDataset
from dmesr.errors import DmesrError
from dmesr.io import exclusive, is_locked, read_json, write_json
from dmesr.train.config import DatasetRef, RunConfig

if TYPE_CHECKING:
    from dmesr.models.sequential import SequentialRecommender


def open_dataset(ref: DatasetRef) -> PreparedDataset:
    """The prepared dataset; prepared first from `paths.config` when it does not exist yet."""
    root = ref.prepared_dir()
    if not (root / "manifest.json").is_file() and ref.config_file() is not None:
        from dmesr.data.prepare import prepare
        from dmesr.data.schema import DatasetConfig

        return prepare(load_config(DatasetConfig, [ref.config_file()]), root)
    return PreparedDataset(root)


@dataclass(frozen=True)
class TrainedRun:
    """A run directory loaded for inference: its config, dataset and weights."""

    path: Path
    config: RunConfig
    dataset: PreparedDataset
    model: SequentialRecommender
    checkpoint: Path
    record: dict[str, Any]  # run.json: provenance, dataset, feature files


def load_trained_run(run: Path, checkpoint: str = "best") -> TrainedRun:
    """The model of a run (`best` or `last` checkpoint, in eval mode) on the dataset it was
    trained on; a dataset whose content hash changed since is refused, and so are feature
    views whose files differ from those the run recorded."""
    from dmesr.features.store import check_features
    from dmesr.models import build_model, feature_record
    from dmesr.train.checkpoint import load_checkpoint

    run = Path(run)
    if not (run / "config.yaml").is_file() or not (run / "run.json").is_file():
        seeds = sorted(p.name for p in run.glob("seed*") if (p / "run.json").is_file())
        hint = (f"it holds one run per seed: {run / seeds[0]}, …" if seeds else
                "give the folder that `dmesr train --out` wrote")
        raise DmesrError(f"{run} is not a run directory (no config.yaml / run.json); {hint}")
    ckpt = run / "checkpoints" / f"{checkpoint}.safetensors"
    if not ckpt.is_file():
        raise DmesrError(f"{ckpt} does not exist: the run has not finished an epoch yet; "
                         "let `dmesr train` run (it resumes) or choose another run")
    cfg = load_config(RunConfig, [run / "config.yaml"])
    ds = open_dataset(cfg.dataset)
    record = read_json(run / "run.json")
    ds.check_hash(record["dataset"]["content_hash"], f"run {run}")
    # the feature tables are not in the checkpoint: other files would silently change it
    check_features(record.get("features"), feature_record(cfg.model, ds), f"run {run}")
    model = build_model(cfg.model, ds.n_items, popularity=ds.train_item_popularity(),
                        dataset=ds)
    load_checkpoint(ckpt, model)
    return TrainedRun(run, cfg, ds, model.eval(), ckpt, record)


def train_run(cfg: RunConfig, out: Path, resume: bool = True) -> dict[str, float]:
    from dmesr.train.distributed import init_from_env, on_main
    from dmesr.train.trainer import Trainer

    ranks = init_from_env()
    with ExitStack() as stack:
        # two trainers in one folder would corrupt it (under torchrun: rank 0 holds the lock)
        on_main(ranks, lambda: stack.enter_context(exclusive(out, "dmesr train")))
        on_main(ranks, lambda: open_dataset(cfg.dataset) and None)  # prepared once, if absent
        return Trainer(cfg, open_dataset(cfg.dataset), out).fit(resume=resume)


def _delete_run(out: Path) -> None:
    if out.exists():
        if any(is_locked(d) for d in (out, *out.glob("seed*"))):
            raise DmesrError(f"{out} is in use by a running `dmesr train`; not deleting it")
        shutil.rmtree(out)


def _print_summary(metrics: dict[str, float], out: Path) -> None:
    keys = ["valid.full.NDCG@10", "test.full.NDCG@10", "test.full.HR@10", "test.sampled.NDCG@10",
            "train.best_epoch", "train.s_per_epoch", "train.time_to_best_s"]
    click.echo(f"{out}: " + ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics))


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--config", "configs", multiple=True, required=True, type=click.Path(),
              help="experiment YAML (repeatable; later files win)")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="run directory")
@click.option("--seeds", default=None, help="comma-separated seeds: one run per seed "
              "in OUT/seed<N>, plus OUT/aggregate.json (mean ± std)")
@click.option("--overwrite", is_flag=True, help="delete OUT first instead of resuming")
@click.argument("overrides", nargs=-1)
def train(configs: tuple[str, ...], out: Path, seeds: str | None, overwrite: bool,
          overrides: tuple[str, ...]) -> None:
    """Train a model; resumes from OUT's last checkpoint if the run was interrupted.

    OVERRIDES are dotted settings such as model.dropout=0.3 train.lr=0.002. Under
    `torchrun --nproc-per-node N -m dmesr.cli train ...` the N processes train one model
    data-parallel (src/dmesr/train/distributed.py).
    """
    from dmesr.train.distributed import init_from_env, on_main

    ranks = init_from_env()
    if overwrite:
        on_main(ranks, lambda: _delete_run(out))
    seed_list = [int(s) for s in seeds.split(",")] if seeds else [None]
    runs = []
    for seed in seed_list:
        extra = [f"train.seed={seed}"] if seed is not None else []
        cfg = load_config(RunConfig, list(configs), [*overrides, *extra])
        run_dir = out / f"seed{seed}" if seed is not None else out
        metrics = train_run(cfg, run_dir)
        if ranks.main:
            _print_summary(metrics, run_dir)
        runs.append(run_dir)
    if len(runs) > 1 and ranks.main:
        from dmesr.eval.compare import aggregate

        agg = aggregate(runs)
        write_json(out / "aggregate.json", {"runs": [str(r) for r in runs], "metrics": agg})
        for key in ("test.full.NDCG@10", "test.full.HR@10"):
            click.echo(f"{key}: {agg[key]['mean']:.4f} ± {agg[key]['std']:.4f} (n={len(runs)})")

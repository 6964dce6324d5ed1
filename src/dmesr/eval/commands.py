"""`dmesr evaluate`: re-evaluate run(s), aggregate seeds, test against a baseline."""

from __future__ import annotations

from pathlib import Path

import click

from dmesr.io import read_json, write_json


def evaluate_run(run: Path) -> dict:
    """Recompute valid/test metrics of a run's best checkpoint (keeps its train.* keys)."""
    from dmesr.train.commands import load_trained_run
    from dmesr.train.trainer import evaluate_run_model

    trained = load_trained_run(run)
    old = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    metrics = {**old, **evaluate_run_model(trained.model, trained.dataset, trained.config, run)}
    write_json(run / "metrics.json", metrics)
    return metrics


@click.command()
@click.option("--run", "runs", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="run directory (repeat for several seeds)")
@click.option("--baseline", "baselines", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="baseline run(s), paired with --run in order, for significance tests")
@click.option("--split", default="test", type=click.Choice(["valid", "test"]))
@click.option("--mode", default="full", type=click.Choice(["full", "sampled"]))
@click.option("--reuse", is_flag=True, help="use the saved metrics instead of re-evaluating")
def evaluate(runs: tuple[Path, ...], baselines: tuple[Path, ...], split: str, mode: str,
             reuse: bool) -> None:
    """Evaluate runs (full + sampled ranking, long-tail groups, per-user vectors)."""
    from dmesr.eval.compare import aggregate, paired_tests

    for run in runs:
        m = read_json(run / "metrics.json") if reuse else evaluate_run(run)
        click.echo(f"{run}: " + ", ".join(
            f"{k}={m[k]:.4f}" for k in (f"{split}.{mode}.NDCG@10", f"{split}.{mode}.HR@10")))
    if len(runs) > 1:
        agg = aggregate(list(runs))
        for key in (f"{split}.{mode}.NDCG@10", f"{split}.{mode}.HR@10"):
            click.echo(f"mean over {len(runs)} runs: {key} = "
                       f"{agg[key]['mean']:.4f} ± {agg[key]['std']:.4f}")
    if baselines and len(baselines) not in (1, len(runs)):
        raise click.UsageError("give one --baseline, or one per --run")
    for i, run in enumerate(runs if baselines else []):
        base = baselines[i] if len(baselines) > 1 else baselines[0]
        tests = paired_tests(run, base, split, mode)
        write_json(run / f"significance_vs_{base.name}.json",
                   {"baseline": str(base), "split": split, "mode": mode, "tests": tests})
        for name, t in tests.items():
            click.echo(f"  vs {base}: {name} {t['run']:.4f} vs {t['baseline']:.4f} "
                       f"(Δ={t['diff']:+.4f}, Wilcoxon p={t['wilcoxon_p']:.3g}, "
                       f"paired t p={t['ttest_p']:.3g})")

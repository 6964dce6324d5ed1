"""`dmesr enhance`: Stage A generation (resumable) and its coverage report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dmesr.enhance.config import load_stage_a
from dmesr.enhance.prompts import VIEWS
from dmesr.errors import ConfigError


def parse_views(text: str | None) -> list[str] | None:
    if not text:
        return None
    views = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        raise ConfigError(f"--views: unknown view(s) {unknown}; known: {', '.join(VIEWS)}")
    return views


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="prepared dataset folder (from `dmesr prepare`)")
@click.option("--config", "configs", multiple=True, type=click.Path(path_type=Path),
              help="YAML config(s), e.g. configs/enhance/local.yaml; later ones win")
@click.option("--views", default=None, help="comma-separated subset of img,txt,mm")
@click.option("--limit", type=int, default=None, help="only the first N items (smoke runs)")
@click.option("--retry-failed", is_flag=True, help="also retry failures judged final")
@click.option("--report", is_flag=True, help="print done/failed/missing per view and exit")
@click.option("--json", "as_json", is_flag=True, help="with --report: print JSON")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.argument("overrides", nargs=-1)
def enhance(
    data_dir: Path,
    configs: tuple[Path, ...],
    views: str | None,
    limit: int | None,
    retry_failed: bool,
    report: bool,
    as_json: bool,
    no_progress: bool,
    overrides: tuple[str, ...],
) -> None:
    """Generate MLLM descriptions (views img, txt, mm) for every item; resumable.

    OVERRIDES are dotted settings, e.g. enhance.local.max_tokens=24.
    """
    from dmesr.enhance.runner import coverage, format_coverage, run_enhance

    cfg = load_stage_a(list(configs), list(overrides)).enhance
    if report:
        rep = coverage(data_dir, cfg)
        click.echo(json.dumps(rep, indent=2) if as_json else format_coverage(rep))
        return
    summary = run_enhance(data_dir, cfg, parse_views(views), limit=limit,
                          retry_failed=retry_failed, progress=not no_progress,
                          log=lambda m: click.echo(m, err=True))
    if summary.did_work:
        click.echo(f"enhance: {sum(summary.ok.values())} generated, "
                   f"{sum(summary.failed.values())} failed in {summary.seconds:.1f}s; "
                   "`dmesr enhance --report` shows coverage", err=True)
    sys.stdout.flush()

"""`dmesr embed`: frozen encoders into the id-aligned feature store (resumable)."""

from __future__ import annotations

from pathlib import Path

import click

from dmesr.enhance.config import load_stage_a


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="prepared dataset folder (from `dmesr prepare`)")
@click.option("--config", "configs", multiple=True, type=click.Path(path_type=Path),
              help="the Stage A YAML (its `enhance:` part says which descriptions to embed)")
@click.option("--views", default=None,
              help="comma-separated view names or kinds (text, mllm, image); default all")
@click.option("--force", is_flag=True, help="re-encode views that are up to date")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.argument("overrides", nargs=-1)
def embed(
    data_dir: Path,
    configs: tuple[Path, ...],
    views: str | None,
    force: bool,
    no_progress: bool,
    overrides: tuple[str, ...],
) -> None:
    """Embed every original text field, MLLM description view and image, once.

    OVERRIDES are dotted settings, e.g. embed.batch_size=128.
    """
    from dmesr.features.embed import run_embed

    cfg = load_stage_a(list(configs), list(overrides))
    only = [v.strip() for v in views.split(",")] if views else None
    summary = run_embed(data_dir, cfg, only=only, force=force, progress=not no_progress,
                        log=lambda m: click.echo(m, err=True))
    for name in summary.written:
        n, s = summary.units[name], summary.seconds[name]
        click.echo(f"{name}: {n} inputs in {s:.1f}s ({n / max(s, 1e-9):.0f}/s)", err=True)

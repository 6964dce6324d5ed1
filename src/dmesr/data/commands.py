"""`dmesr prepare`."""

from __future__ import annotations

from pathlib import Path

import click

from dmesr.config import apply_overrides, build, deep_merge, load_yaml
from dmesr.data.schema import DatasetConfig
from dmesr.errors import ConfigError


def load_dataset_config(
    config: Path | None,
    overrides: list[str],
    fmt: str | None = None,
    interactions: Path | None = None,
    items: Path | None = None,
    on_error: str | None = None,
) -> DatasetConfig:
    """Dataset config from a YAML file and/or command-line shortcuts, then dotted overrides."""
    data: dict = load_yaml(config) if config else {}
    if "dataset" in data and isinstance(data["dataset"], dict):
        data = data["dataset"]  # an experiment config embedding its dataset
    cli: dict = {}
    if fmt:
        cli["format"] = fmt
    paths = {k: str(v.resolve()) for k, v in (("interactions", interactions),
                                              ("items", items)) if v}
    if paths:
        cli["paths"] = paths
    if on_error:
        cli["on_error"] = on_error
    data = deep_merge(data, cli)
    if not config and "name" not in data:
        source = interactions or Path("dataset")
        data["name"] = source.stem.split(".")[0]
    if "format" not in data:
        raise ConfigError("give --config FILE or --format NAME")
    data = apply_overrides(data, overrides)
    return build(DatasetConfig, data, str(config or "command line"))


@click.command("prepare", context_settings={"show_default": True})
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="dataset YAML (configs/datasets/*.yaml)")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="output directory (written atomically)")
@click.option("--format", "fmt", help="reader name (generic, amazon2018, yelp, …)")
@click.option("--interactions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="generic format: interactions CSV/Parquet")
@click.option("--items", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="generic format: items CSV/Parquet")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default=None,
              help="bad records: stop with an error (raise) or skip, count and write "
                   "rejects.jsonl (skip); default from the config, else raise")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--force", is_flag=True, help="rebuild even when OUT is up to date")
@click.argument("overrides", nargs=-1)
def prepare(config: Path | None, out: Path, fmt: str | None, interactions: Path | None,
            items: Path | None, on_error: str | None, quiet: bool, force: bool,
            overrides: tuple[str, ...]) -> None:
    """Read a raw dataset and prepare it (SPEC §2).

    OVERRIDES are dotted settings such as filter.user_min=10 split.seed=7.
    """
    from dmesr.data.prepare import prepare as run_prepare

    cfg = load_dataset_config(config, list(overrides), fmt, interactions, items, on_error)
    run_prepare(cfg, out, log=click.echo, progress=not quiet, force=force)

"""`GridConfig`: one experiment grid (backbones × variants × seeds, plus ablations).

A grid YAML may `include:` other grid YAML files (the shared variant vocabulary lives in
configs/experiments/variants.yaml); `include:` rather than `base:` because `base` here
names the RunConfig files every cell starts from. Relative paths in `base` and in
backbone files are relative to the YAML file that names them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmesr.config import apply_overrides, build, deep_merge, read_yaml_mapping, resolve_path
from dmesr.errors import ConfigError

# A variant (or backbone) as settings: dotted overrides, or a nested mapping of them.
Settings = list[str] | dict[str, Any]

# First keys of dotted overrides that address the run (RunConfig), not the grid.
RUN_SECTIONS = ("model", "train", "eval")


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="grid name; default output runs/<name>")
    dataset: str = Field(description="dataset label for tables (results/<dataset>)")
    base: list[str] = Field(description="RunConfig YAML files every cell starts from")
    backbones: dict[str, str | Settings] = Field(
        description="name -> RunConfig YAML file or settings (e.g. sasrec/bert4rec/gru4rec)")
    vocabulary: dict[str, Settings] = Field(
        default_factory=dict, description="named variants that `variants`/`ablations` may list")
    variants: list[str] | dict[str, Settings] = Field(
        description="variants run on every backbone (names from `vocabulary`, or inline)")
    ablations: list[str] | dict[str, Settings] = Field(
        default_factory=list, description="variants run only on `ablation_backbones`")
    ablation_backbones: list[str] = Field(default_factory=lambda: ["sasrec"])
    seeds: list[int] = Field(default_factory=lambda: [2026])
    workers: int = Field(2, ge=1, description="parallel training processes")
    threads: int | None = Field(
        None, ge=1, description="torch threads per cell; None: cores // workers (set it when "
        "other jobs share the cores: oversubscribed OpenMP threads slow every run down)")
    protocols: list[Literal["full", "sampled"]] = Field(
        default_factory=lambda: ["full", "sampled"], description="ranking protocols in tables")
    compare_to: list[str] = Field(
        default_factory=lambda: ["id", "llmesr"], description="baselines for p-values")
    overrides: list[str] = Field(
        default_factory=list, description="dotted run settings for every cell (before the "
        "variant's own, so a variant wins over them)")
    out: str | None = Field(None, description="run directory root; None: runs/<name>")
    results_dir: str | None = Field(None, description="None: results/<dataset>")

    @model_validator(mode="after")
    def _check(self) -> GridConfig:
        for field in ("variants", "ablations"):
            value = getattr(self, field)
            missing = [n for n in value if isinstance(value, list) and n not in self.vocabulary]
            if missing:
                raise ValueError(f"{field}: {missing} not in vocabulary "
                                 f"({sorted(self.vocabulary)})")
        unknown = [b for b in self.ablation_backbones if b not in self.backbones]
        if unknown and self.ablations:
            raise ValueError(f"ablation_backbones {unknown} are not in backbones")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        return self

    # ---- resolved views -------------------------------------------------------------
    def variant_settings(self, which: Literal["variants", "ablations"]) -> dict[str, list[str]]:
        """name -> dotted overrides, in the grid's order."""
        value = getattr(self, which)
        if isinstance(value, list):
            return {n: to_overrides(self.vocabulary[n], n) for n in value}
        return {n: to_overrides(s, n) for n, s in value.items()}

    def backbone_parts(self, name: str) -> tuple[list[str], list[str]]:
        """(extra config files, dotted overrides) that make backbone `name`."""
        spec = self.backbones[name]
        if isinstance(spec, str):
            return [spec], []
        return [], to_overrides(spec, f"backbone {name}")

    # Relative `out` / `results_dir` are relative to the working directory (like `--out`
    # of `dmesr train`); made absolute so recorded per-cell commands work from anywhere.
    def out_dir(self) -> Path:
        return resolve_path(self.out or f"runs/{self.name}").absolute()

    def results_path(self) -> Path:
        return resolve_path(self.results_dir or f"results/{self.dataset}").absolute()


def to_overrides(spec: Settings, what: str) -> list[str]:
    """Dotted override strings from a list of them or a nested mapping (leaves as JSON,
    which is valid YAML, so `parse_override` reads back exactly the same value)."""
    if isinstance(spec, list):
        bad = [s for s in spec if "=" not in s]
        if bad:
            raise ConfigError(f"{what}: {bad} are not dotted overrides (key.sub=value)")
        return list(spec)
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out.append(f"{prefix}={json.dumps(node)}")

    walk(spec, "")
    return out


def load_grid_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A grid mapping with its `include:` files merged in (later wins) and paths absolute."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular 'include:' chain")
    data = read_yaml_mapping(path, "grid")
    includes = data.pop("include", None)
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes or []:
        merged = deep_merge(merged, load_grid_yaml(path.parent / inc, (*_seen, path)))
    if isinstance(data.get("base"), str):
        data["base"] = [data["base"]]
    if isinstance(data.get("base"), list):
        data["base"] = [str(resolve_path(p, path.parent)) for p in data["base"]]
    for name, spec in (data.get("backbones") or {}).items():
        if isinstance(spec, str):
            data["backbones"][name] = str(resolve_path(spec, path.parent))
    return deep_merge(merged, data)


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(grid overrides, run overrides): `train.epochs=2`, `dataset.paths.prepared=…` go to
    every run; `seeds=[1,2]`, `workers=1`, `out=…` change the grid."""
    grid, run = [], []
    for text in overrides:
        key = text.partition("=")[0].strip()
        first = key.split(".")[0]
        is_run = first in RUN_SECTIONS or (first == "dataset" and "." in key)
        (run if is_run else grid).append(text)
    return grid, run


def load_grid(path: str | Path, overrides: list[str] | None = None) -> GridConfig:
    data = apply_overrides(load_grid_yaml(path), overrides or [])
    return build(GridConfig, data, str(path))

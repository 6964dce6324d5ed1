"""One configuration system: pydantic models loaded from layered YAML plus dotted overrides.

Layers merge left to right (later wins), like RecBole's: package defaults < the YAML
files named on the command line (each may name a `base:` file it extends) < dotted
overrides such as `train.lr=0.0005`. Unknown keys are errors, so a typo never passes
silently.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dmesr.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; an unset variable without default is an error."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} is not set (used in '{value}')")

    return _ENV.sub(repl, value)


def resolve_path(value: str | Path, base_dir: Path | None = None) -> Path:
    """Resolve a config path: env vars, `pkg://package/sub/path`, `~`, then relative to base_dir."""
    text = expand_env(str(value))
    if text.startswith("pkg://"):
        package, _, rest = text[len("pkg://") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"'{text}' needs the Python package '{package}', which is not installed"
                + (" (pip install --no-deps recbole==1.2.1)" if package == "recbole" else "")
            )
        return Path(next(iter(spec.submodule_search_locations))) / rest
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml_mapping(path: Path, what: str = "config") -> dict[str, Any]:
    """One YAML file that must hold a mapping; every failure names the file."""
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a YAML mapping, following `base:` (relative to the file); `paths:` made absolute."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular 'base:' chain")
    data = read_yaml_mapping(path)
    bases = data.pop("base", None)
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases or []:
        merged = deep_merge(merged, load_yaml(path.parent / base, (*_seen, path)))
    return deep_merge(merged, _absolutise_paths(data, path.parent))


def _absolutise_paths(node: Any, base_dir: Path) -> Any:
    """Make every string under a `paths:` mapping absolute relative to its own YAML file.

    That way a dataset config keeps working when layered under an experiment config that
    lives elsewhere, and no path depends on the current directory.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "paths" and isinstance(value, dict):
            out[key] = {
                k: (v if v is None or str(v).startswith("pkg://")
                    else str(resolve_path(v, base_dir)))
                for k, v in value.items()
            }
        else:
            out[key] = _absolutise_paths(value, base_dir)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], parsed YAML value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value
    return out


def build(model: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Validate a merged mapping into `model`, turning pydantic errors into one clear message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def load_config(
    model: type[M],
    paths: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> M:
    data: dict[str, Any] = copy.deepcopy(defaults or {})
    for p in paths or []:
        data = deep_merge(data, load_yaml(p))
    data = apply_overrides(data, overrides or [])
    source = ", ".join(str(p) for p in paths or []) or "config"
    return build(model, data, source)


def dump_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)

"""Three-way prompting (SPEC §1.1): versioned templates per view, rendered per item.

A `TemplateSet` is a YAML file (packaged ones live in `enhance/templates/`, or any path).
Rendering an item gives a `Prompt` whose `prompt_hash` covers everything that decides
the model's answer except the model itself (the cache is per model): template id and
version, view, mode, system text, the rendered user text and the image's content hash.
A template edit therefore changes the hash of exactly the items it touches, and the
cache never serves an answer produced by another prompt.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from dmesr.errors import ConfigError
from dmesr.io import sha256_bytes, stable_hash

View = Literal["img", "txt", "mm"]
Mode = Literal["chat", "completion"]
VIEWS: tuple[View, ...] = ("img", "txt", "mm")
IMAGE_VIEWS: frozenset[str] = frozenset({"img", "mm"})
TEMPLATE_DIR = Path(__file__).parent / "templates"
_ALLOWED_FIELDS = {"domain", "fields"}


@dataclass(frozen=True)
class Prompt:
    """One rendered request: what a backend sends for (item, view)."""

    view: str
    mode: str
    system: str | None
    text: str
    image_path: str | None
    image_sha: str | None
    template: str  # "id@version"
    prompt_hash: str


@dataclass(frozen=True)
class TemplateSet:
    id: str
    version: int
    system: str | None
    views: dict[str, dict[str, str]]

    @classmethod
    def load(cls, name_or_path: str | Path) -> TemplateSet:
        """Load a packaged template set by name (`default`) or a YAML file by path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = TEMPLATE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"prompt template file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "templates") -> TemplateSet:
        for key in ("id", "version", "views"):
            if key not in data:
                raise ConfigError(f"{source}: missing '{key}'")
        views = {str(v): {str(m): str(t) for m, t in modes.items()}
                 for v, modes in data["views"].items()}
        for view, modes in views.items():
            if view not in VIEWS:
                raise ConfigError(f"{source}: unknown view '{view}' (known: {', '.join(VIEWS)})")
            for mode, text in modes.items():
                _check_placeholders(text, f"{source}: views.{view}.{mode}")
        return cls(str(data["id"]), int(data["version"]), data.get("system"), views)

    @property
    def tag(self) -> str:
        return f"{self.id}@{self.version}"

    def fingerprint(self, view: str, mode: str) -> str:
        """Hash of the template itself (not of any item): recorded in feature sidecars."""
        return stable_hash([self.id, self.version, view, mode, self.system,
                            self.template(view, mode)])[:16]

    def template(self, view: str, mode: str) -> str:
        try:
            return self.views[view][mode]
        except KeyError:
            raise ConfigError(
                f"template set {self.tag} has no '{mode}' prompt for view '{view}'"
            ) from None

    def render(
        self,
        view: str,
        mode: str,
        domain: str,
        fields: dict[str, Any],
        image_path: str | None = None,
        image_sha: str | None = None,
        max_field_chars: int = 1200,
    ) -> Prompt:
        rendered_fields = render_fields(fields, max_field_chars)
        text = self.template(view, mode).format(domain=domain, fields=rendered_fields)
        system = self.system if mode == "chat" else None
        h = stable_hash([self.id, self.version, view, mode, system, text, image_sha])[:16]
        return Prompt(view, mode, system, text, image_path, image_sha, self.tag, h)


def _check_placeholders(text: str, where: str) -> None:
    names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    unknown = names - _ALLOWED_FIELDS
    if unknown:
        raise ConfigError(
            f"{where}: unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED_FIELDS)}"
        )


def is_blank(value: Any) -> bool:
    """None, NaN, pandas NA/NaT or whitespace: a field the item does not have."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return not str(value).strip()


def render_fields(fields: dict[str, Any], max_chars: int = 1200) -> str:
    """`Name: value` lines for the non-empty fields, each value cut to `max_chars`.

    Long descriptions are cut because a prompt's cost grows with its length while the
    summary needs only the gist; the cut is part of the rendered text, hence of the hash.
    """
    lines = []
    for name, value in fields.items():
        if is_blank(value):
            continue
        text = " ".join(str(value).split())
        if len(text) > max_chars:
            text = text[:max_chars].rsplit(" ", 1)[0] + " …"
        lines.append(f"{name.replace('_', ' ').capitalize()}: {text}")
    return "\n".join(lines)


def image_sha(path: str | Path | None) -> str | None:
    """Content hash of an image file (part of the image views' prompt hash); None if unreadable."""
    if path is None:
        return None
    try:
        return sha256_bytes(Path(path).read_bytes())[:16]
    except OSError:
        return None

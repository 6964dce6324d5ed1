"""The contract between readers and preparation, and the dataset configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmesr.config import resolve_path
from dmesr.errors import ConfigError

# Columns every reader must deliver (row order = order in the source files).
INTERACTION_COLUMNS = ("user_key", "item_key", "timestamp", "rating")
ITEM_KEY = "item_key"
IMAGE_COLUMN = "image_ref"  # local path or URL, None when the item has no image


@dataclass
class RawData:
    """What a reader returns, before any filtering.

    interactions: user_key (str), item_key (str), timestamp (int64 milliseconds since
        the Unix epoch; a day-resolution source gives midnight UTC), rating (float64,
        NaN when absent).
    items: item_key (str, unique) + one column per text field (str or None) +
        `image_ref` (absolute local path or URL, or None).
    text_fields: the columns of `items` that are item text, in display order.
    sources: every input file read (their sha256 goes into the manifest).
    notes: human-readable facts the reader wants in the manifest (e.g. tie-break rule).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    text_fields: list[str]
    sources: list[Path]
    notes: list[str] = field(default_factory=list)


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating_min: float | None = Field(
        None, description="keep interactions with rating >= this (None keeps all)"
    )
    dedup: Literal["none", "exact", "consecutive", "user_item"] = Field(
        "exact",
        description="exact: drop rows repeating (user, item, timestamp); consecutive: drop a "
        "row whose item equals the user's previous item; user_item: keep only the first "
        "(user, item); none: keep all",
    )
    user_min: int = Field(5, ge=1, description="k-core: minimum interactions per user")
    item_min: int = Field(5, ge=1, description="k-core: minimum interactions per item")
    max_kcore_iterations: int = Field(100, ge=1)


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_negatives: int = Field(100, ge=1, description="sampled negatives per user, per split")
    seed: int = 2026


class ImageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check: Literal["none", "exists", "decode"] = Field(
        "decode", description="how image files are verified (decode opens them with Pillow)"
    )
    url_cache_dir: str | None = Field(
        None, description="folder holding downloaded images named sha1(url) + extension"
    )


class DatasetConfig(BaseModel):
    """A dataset: where its files are, how to read them and how to prepare them."""

    model_config = ConfigDict(extra="forbid")

    name: str
    format: str = Field(description="reader name, see `dmesr prepare --help`")
    domain: str = Field("item", description="domain word used in MLLM prompts, e.g. 'movie'")
    paths: dict[str, str | None] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    text_fields: list[str] | None = Field(
        None, description="item text columns to keep (None: the reader's default set)"
    )
    filter: FilterConfig = Field(default_factory=FilterConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    images: ImageConfig = Field(default_factory=ImageConfig)
    on_error: Literal["raise", "skip"] = "raise"

    @model_validator(mode="after")
    def _check_filter(self) -> DatasetConfig:
        if self.filter.user_min < 3:
            # leave-one-out needs >= 1 train, 1 valid and 1 test item per user
            raise ValueError("filter.user_min must be >= 3 for a leave-one-out split")
        return self

    def select_text_fields(self, available: list[str], default: list[str],
                           noun: str = "field") -> list[str]:
        """`text_fields` (or the reader's default), checked against what the source offers."""
        wanted = list(self.text_fields) if self.text_fields is not None else default
        unknown = [f for f in wanted if f not in available]
        if unknown:
            raise ConfigError(
                f"dataset '{self.name}' (format {self.format}): unknown text {noun}(s) "
                f"{', '.join(map(repr, unknown))}; available: {', '.join(available)}"
            )
        return list(dict.fromkeys(wanted))

    def path(self, key: str, required: bool = True) -> Path | None:
        """A named input path, resolved (env vars, pkg://, relative to the config file)."""
        value = self.paths.get(key)
        if value is None:
            if required:
                raise ConfigError(
                    f"dataset '{self.name}' (format {self.format}) needs paths.{key}"
                )
            return None
        return resolve_path(value)

"""Amazon Reviews readers: 2014 and 2018 (McAuley lab) and 2023 (McAuley lab, `parent_asin`).

Each version is a reviews file plus a metadata file, JSON lines, plain or gzip (detected
by magic bytes). The 2014 metadata lines are Python literals (`{'asin': ...}`), read with
`ast.literal_eval` when a line is not JSON. Only metadata of reviewed items is kept: the
metadata files cover millions of unreviewed products that preparation would drop anyway.
Images are URLs; preparation resolves them through its download cache.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dmesr.data.readers._records import (
    Bad,
    as_float,
    as_id,
    as_int,
    check_options,
    clean_text,
    fast_frame,
    fast_table,
    interactions_frame,
    items_frame,
    iter_records,
    report,
)
from dmesr.data.schema import DatasetConfig, RawData
from dmesr.errors import ConfigError, ErrorPolicy

Meta = dict[str, Any]
TextFn = Callable[[Meta], "str | None"]

_PRICE = re.compile(r"\$?\s?\d[\d,]*(\.\d+)?(\s*-\s*\$?\s?\d[\d,]*(\.\d+)?)?")
TIE_NOTE = "ties in (user, timestamp) keep reviews-file order (stable sort)"


@dataclass(frozen=True)
class _Version:
    """Where one Amazon release keeps each piece of information."""

    name: str
    user: str
    item: str
    rating: str
    time: str
    time_to_ms: int
    meta_key: str
    texts: dict[str, TextFn]  # every text field the release offers, in display order
    default: list[str]
    image: Callable[[Meta], str | None]


# ---------------------------------------------------------------- field extractors


def _price(value: Any) -> str | None:
    """A price as text; the 2018 `price` field sometimes holds scraped CSS/JS: dropped."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"${value:.2f}" if value > 0 else None
    text = clean_text(value)
    if text and _PRICE.fullmatch(text):
        return text if text.startswith("$") else f"${text}"
    return None


def _category_paths(value: Any) -> str | None:
    """2014: list of paths (lists); 2018/2023: one path. Paths 'A > B', several joined '; '."""
    if not isinstance(value, list) or not value:
        return clean_text(value)
    paths = value if isinstance(value[0], list) else [value]
    return clean_text([clean_text(p, " > ") for p in paths if isinstance(p, list)], "; ")


def _sales_rank(value: Any) -> str | None:
    if isinstance(value, dict):
        return clean_text([f"#{rank} in {cat}" for cat, rank in value.items()], "; ")
    return clean_text(value)


def _first_url(*candidates: Any) -> str | None:
    for value in candidates:
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), None)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _image_2023(meta: Meta) -> str | None:
    """The MAIN image if there is one, else the first; hi_res preferred over large."""
    images = meta.get("images")
    if isinstance(images, dict):  # the Hugging Face copy stores a dict of parallel lists
        cols = {k: list(images.get(k) or []) for k in ("hi_res", "large", "variant")}
        n = max(len(c) for c in cols.values())
        images = [{k: c[i] if i < len(c) else None for k, c in cols.items()} for i in range(n)]
    if not isinstance(images, list):
        return None
    entries = [im for im in images if isinstance(im, dict)]
    entries.sort(key=lambda im: im.get("variant") != "MAIN")  # stable: MAIN first
    for im in entries:
        url = _first_url(im.get("hi_res"), im.get("large"))
        if url:
            return url
    return None


def _brand_2023(meta: Meta) -> str | None:
    details = meta.get("details")
    brand = details.get("Brand") if isinstance(details, dict) else None
    return clean_text(brand) or clean_text(meta.get("store"))


def _field(key: str, sep: str = " ") -> TextFn:
    return lambda meta: clean_text(meta.get(key), sep)


V2014 = _Version(
    name="amazon2014", user="reviewerID", item="asin", rating="overall",
    time="unixReviewTime", time_to_ms=1000, meta_key="asin",
    texts={
        "title": _field("title"),
        "brand": _field("brand"),
        "categories": lambda m: _category_paths(m.get("categories")),
        "description": _field("description"),
        "price": lambda m: _price(m.get("price")),
        "sales_rank": lambda m: _sales_rank(m.get("salesRank")),
    },
    default=["title", "brand", "categories", "description", "price"],
    image=lambda m: _first_url(m.get("imUrl")),
)

V2018 = _Version(
    name="amazon2018", user="reviewerID", item="asin", rating="overall",
    time="unixReviewTime", time_to_ms=1000, meta_key="asin",
    texts={
        "title": _field("title"),
        "brand": _field("brand"),
        "main_category": _field("main_cat"),
        "categories": lambda m: _category_paths(m.get("category")),
        "description": _field("description"),
        "features": _field("feature", "; "),
        "price": lambda m: _price(m.get("price")),
    },
    default=["title", "brand", "categories", "description", "features", "price"],
    image=lambda m: _first_url(m.get("imageURLHighRes"), m.get("imageURL")),
)

V2023 = _Version(
    name="amazon2023", user="user_id", item="parent_asin", rating="rating",
    time="timestamp", time_to_ms=1, meta_key="parent_asin",
    texts={
        "title": _field("title"),
        "store": _field("store"),
        "brand": _brand_2023,
        "main_category": _field("main_category"),
        "categories": lambda m: _category_paths(m.get("categories")),
        "features": _field("features", "; "),
        "description": _field("description"),
        "details": _field("details"),
        "price": lambda m: _price(m.get("price")),
    },
    default=["title", "store", "categories", "features", "description", "price"],
    image=_image_2023,
)


# ---------------------------------------------------------------- readers


def read_amazon2014(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    check_options(cfg, [])
    return _read(cfg, policy, V2014, V2014.item)


def read_amazon2018(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    check_options(cfg, [])
    return _read(cfg, policy, V2018, V2018.item)


def read_amazon2023(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    """options.item_key: `parent_asin` (default: one item per product, as the metadata is
    keyed) or `asin` (one item per variant; each variant gets its parent's metadata)."""
    check_options(cfg, ["item_key"])
    item_key = cfg.options.get("item_key", "parent_asin")
    if item_key not in ("parent_asin", "asin"):
        raise ConfigError(
            f"dataset '{cfg.name}': options.item_key must be parent_asin or asin, got {item_key!r}"
        )
    return _read(cfg, policy, V2023, item_key)


def _read(cfg: DatasetConfig, policy: ErrorPolicy, v: _Version, item_field: str) -> RawData:
    fields = cfg.select_text_fields(list(v.texts), v.default)
    reviews_path = cfg.path("reviews")
    meta_path = cfg.path("meta")
    assert reviews_path is not None and meta_path is not None
    reviews, parent_of = _read_reviews(reviews_path, policy, v, item_field)
    wanted = set(parent_of.values()) if parent_of else set(reviews["item_key"])
    keys, texts, images, meta_notes = _read_meta(meta_path, policy, v, fields, wanted)
    if parent_of:  # one row per variant asin, carrying its parent's metadata
        row_of = {k: i for i, k in enumerate(keys)}
        children = [c for c, p in parent_of.items() if p in row_of]
        rows = [row_of[parent_of[c]] for c in children]
        keys = children
        texts = {f: [vals[r] for r in rows] for f, vals in texts.items()}
        images = [images[r] for r in rows]
    n_items = reviews["item_key"].nunique()
    notes = [
        f"{v.name}: {len(reviews)} reviews of {n_items} items by "
        f"{reviews['user_key'].nunique()} users; items keyed by {item_field}",
        *meta_notes,
        f"{n_items - len(keys)} reviewed items have no metadata row (no text, no image)",
        f"{sum(i is not None for i in images)} of {len(keys)} items have an image URL",
        TIE_NOTE,
    ]
    return RawData(
        interactions=reviews,
        items=items_frame(keys, texts, images),
        text_fields=fields,
        sources=[reviews_path, meta_path],
        notes=notes,
    )


def _read_reviews(
    path: Path, policy: ErrorPolicy, v: _Version, item_field: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Interactions in file order, plus asin -> parent_asin when items are variants."""
    fast = _fast_reviews(path, v, item_field)
    if fast is not None:
        return fast
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    ratings: list[float] = []
    parent_of: dict[str, str] = {}
    variants = item_field != v.item
    for lineno, rec in iter_records(path, policy):
        try:
            user = as_id(rec, v.user)
            item = as_id(rec, item_field)
            rating = as_float(rec, v.rating)
            time = as_int(rec, v.time, "a unix time (integer)") * v.time_to_ms
            parent = as_id(rec, v.item) if variants else ""
        except Bad as exc:
            report(policy, path, lineno, exc, rec)
            continue
        users.append(user)
        items.append(item)
        times.append(time)
        ratings.append(rating)
        if variants:
            parent_of.setdefault(item, parent)
    return interactions_frame(users, items, times, ratings), parent_of


def _fast_reviews(
    path: Path, v: _Version, item_field: str
) -> tuple[pd.DataFrame, dict[str, str]] | None:
    fields = {v.user: pa.string(), item_field: pa.string(), v.item: pa.string(),
              v.rating: pa.float64(), v.time: pa.int64()}
    table = fast_table(path, fields)
    if table is None:
        return None
    time_ms = pc.multiply(table[v.time], v.time_to_ms)
    frame = fast_frame(table, v.user, item_field, v.rating, time_ms)
    parent_of: dict[str, str] = {}
    if item_field != v.item:
        pairs = pd.DataFrame({"c": frame["item_key"], "p": table[v.item].to_pandas()})
        pairs = pairs.drop_duplicates("c")
        parent_of = dict(zip(pairs["c"], pairs["p"], strict=True))
    return frame, parent_of


def _read_meta(
    path: Path, policy: ErrorPolicy, v: _Version, fields: list[str], wanted: set[str]
) -> tuple[list[str], dict[str, list[str | None]], list[str | None], list[str]]:
    keys: list[str] = []
    texts: dict[str, list[str | None]] = {f: [] for f in fields}
    images: list[str | None] = []
    seen: set[str] = set()
    duplicates = unreviewed = 0
    for lineno, rec in iter_records(path, policy):
        try:
            key = as_id(rec, v.meta_key)
        except Bad as exc:
            report(policy, path, lineno, exc, rec)
            continue
        if key not in wanted:
            unreviewed += 1
            continue
        if key in seen:  # the 2018 dumps repeat some products; the first row wins
            duplicates += 1
            continue
        seen.add(key)
        keys.append(key)
        for f in fields:
            texts[f].append(v.texts[f](rec))
        images.append(v.image(rec))
    notes = [
        f"metadata: {len(keys)} reviewed items described; {unreviewed} rows of unreviewed "
        f"items skipped; {duplicates} repeated {v.meta_key} rows ignored (first row kept)"
    ]
    return keys, texts, images, notes

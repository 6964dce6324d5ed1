"""Yelp Open Dataset reader: reviews + businesses (+ photos.json and the photo folder).

Items are businesses. One image per business: the first photo whose label comes first in
`options.photo_labels` (default outside, inside, food, drink, menu), ties broken by the
order of photos.json. Review dates are local wall-clock times without a zone; they are
read as UTC, which keeps each user's order (what sequential models use).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dmesr.data.readers._records import (
    Bad,
    as_datetime_ms,
    as_float,
    as_id,
    check_options,
    clean_text,
    fast_frame,
    fast_table,
    get,
    interactions_frame,
    items_frame,
    iter_records,
    report,
)
from dmesr.data.schema import DatasetConfig, RawData
from dmesr.errors import ConfigError, ErrorPolicy

DEFAULT_LABELS = ["outside", "inside", "food", "drink", "menu"]
TEXT_FIELDS = ["name", "categories", "location", "address", "attributes", "caption"]
DEFAULT_TEXT = ["name", "categories", "location", "attributes", "caption"]
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def read_yelp(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    check_options(cfg, ["photo_labels"])
    labels = _photo_labels(cfg)
    fields = cfg.select_text_fields(list(TEXT_FIELDS), DEFAULT_TEXT)
    reviews_path = cfg.path("reviews")
    business_path = cfg.path("business")
    photos_path = cfg.path("photos", required=False)
    photo_dir = _photo_dir(cfg, photos_path)
    assert reviews_path is not None and business_path is not None

    interactions = _read_reviews(reviews_path, policy)
    wanted = set(interactions["item_key"])
    photos = _read_photos(photos_path, policy, labels, wanted) if photos_path else {}
    keys, texts = _read_businesses(business_path, policy, fields, wanted, photos)
    images = [
        str(photo_dir / f"{photos[k][0]}.jpg") if photo_dir and k in photos else None
        for k in keys
    ]
    sources = [reviews_path, business_path] + ([photos_path] if photos_path else [])
    notes = [
        f"yelp: {len(interactions)} reviews of {len(wanted)} businesses by "
        f"{interactions['user_key'].nunique()} users",
        f"{len(wanted) - len(keys)} reviewed businesses missing from the business file",
        f"{sum(i is not None for i in images)} of {len(keys)} businesses have a photo "
        f"(labels in order {labels}; first in photos.json order within a label)"
        + ("" if photo_dir or not photos_path else "; no photo folder, so no image paths"),
        "review dates are local times read as UTC; ties keep review-file order",
    ]
    return RawData(interactions, items_frame(keys, texts, images), fields, sources, notes)


def _photo_labels(cfg: DatasetConfig) -> list[str]:
    labels = cfg.options.get("photo_labels", DEFAULT_LABELS)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ConfigError(
            f"dataset '{cfg.name}': options.photo_labels must be a list of labels, "
            f"e.g. {DEFAULT_LABELS}; got {labels!r}"
        )
    return labels


def _photo_dir(cfg: DatasetConfig, photos_path: Path | None) -> Path | None:
    """paths.photo_dir, else the `photos/` folder next to photos.json (the tarball layout)."""
    photo_dir = cfg.path("photo_dir", required=False)
    if photo_dir is not None and photos_path is None:
        raise ConfigError(
            f"dataset '{cfg.name}': paths.photo_dir needs paths.photos (photos.json maps "
            "photos to businesses)"
        )
    if photo_dir is None and photos_path is not None:
        guess = photos_path.parent / "photos"
        photo_dir = guess if guess.is_dir() else None
    return photo_dir.resolve() if photo_dir else None


def _read_reviews(path: Path, policy: ErrorPolicy) -> pd.DataFrame:
    table = fast_table(path, {"user_id": pa.string(), "business_id": pa.string(),
                              "stars": pa.float64(), "date": pa.string()})
    if table is not None:
        parsed = pc.strptime(table["date"], format=DATE_FORMAT, unit="ms", error_is_null=True)
        if not parsed.null_count:
            return fast_frame(table, "user_id", "business_id", "stars",
                              pc.cast(parsed, pa.int64()))
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    stars: list[float] = []
    for lineno, rec in iter_records(path, policy, allow_literal=False):
        try:
            user = as_id(rec, "user_id")
            item = as_id(rec, "business_id")
            rating = as_float(rec, "stars")
            time = as_datetime_ms(rec, "date", DATE_FORMAT, "2018-07-07 22:09:11")
        except Bad as exc:
            report(policy, path, lineno, exc, rec)
            continue
        users.append(user)
        items.append(item)
        times.append(time)
        stars.append(rating)
    return interactions_frame(users, items, times, stars)


def _read_photos(
    path: Path, policy: ErrorPolicy, labels: list[str], wanted: set[str]
) -> dict[str, tuple[str, str | None]]:
    """business_id -> (photo_id, caption) of its best photo."""
    rank = {label: i for i, label in enumerate(labels)}
    best: dict[str, tuple[int, str, str | None]] = {}
    for lineno, rec in iter_records(path, policy, allow_literal=False):
        try:
            photo = as_id(rec, "photo_id")
            business = as_id(rec, "business_id")
            label = get(rec, "label")
        except Bad as exc:
            report(policy, path, lineno, exc, rec)
            continue
        r = rank.get(label) if isinstance(label, str) else None
        if r is None or business not in wanted:
            continue
        if business not in best or r < best[business][0]:  # strict <: earlier photo wins ties
            best[business] = (r, photo, clean_text(rec.get("caption")))
    return {b: (photo, caption) for b, (_, photo, caption) in best.items()}


def _read_businesses(
    path: Path,
    policy: ErrorPolicy,
    fields: list[str],
    wanted: set[str],
    photos: dict[str, tuple[str, str | None]],
) -> tuple[list[str], dict[str, list[str | None]]]:
    keys: list[str] = []
    texts: dict[str, list[str | None]] = {f: [] for f in fields}
    seen: set[str] = set()
    for lineno, rec in iter_records(path, policy, allow_literal=False):
        try:
            key = as_id(rec, "business_id")
        except Bad as exc:
            report(policy, path, lineno, exc, rec)
            continue
        if key not in wanted or key in seen:  # a repeated business: the first row wins
            continue
        seen.add(key)
        keys.append(key)
        values = _business_text(rec, photos.get(key, ("", None))[1])
        for f in fields:
            texts[f].append(values[f])
    return keys, texts


def _business_text(rec: dict[str, Any], caption: str | None) -> dict[str, str | None]:
    location = ", ".join(p for p in (clean_text(rec.get("city")), clean_text(rec.get("state"))) if p)
    return {
        "name": clean_text(rec.get("name")),
        "categories": clean_text(rec.get("categories")),
        "location": location or None,
        "address": clean_text(rec.get("address")),
        "attributes": attributes_summary(rec.get("attributes")),
        "caption": caption,
    }


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z0-9])")
_KEY_NAMES = {"RestaurantsPriceRange2": "price range", "WiFi": "wifi"}


def _attr_value(value: Any) -> Any:
    """Yelp stores attribute values as Python-literal strings: "True", "u'free'", "{...}"."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
    return value


def attributes_summary(attributes: Any) -> str | None:
    """'accepts credit cards; WiFi: free; ambience: casual, classy' — true and valued ones only."""
    if not isinstance(attributes, dict):
        return None
    parts: list[str] = []
    for key, raw in attributes.items():
        name = _KEY_NAMES.get(key) or _CAMEL.sub(" ", key.removeprefix("Business")
                                                 .removeprefix("Restaurants")).lower()
        value = _attr_value(raw)
        if value is True:
            parts.append(name)
        elif isinstance(value, dict):
            on = [str(k) for k, v in value.items() if _attr_value(v) is True]
            if on:
                parts.append(f"{name}: {', '.join(on)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{name}: {value}")
        elif isinstance(value, str) and value.strip().lower() not in ("", "no", "none", "false"):
            parts.append(f"{name}: {value.strip()}")
    return "; ".join(parts) or None

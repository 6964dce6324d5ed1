"""MovieLens readers: RecBole atomic files, original ML-100K and ML-1M, ML-100K + TMDB posters."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from dmesr.data.readers._table import numeric_column, read_delimited
from dmesr.data.schema import IMAGE_COLUMN, DatasetConfig, RawData
from dmesr.errors import DataError, ErrorPolicy

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
TIE_NOTE = "ties in (user, timestamp) keep source-file order (stable sort)"


def _interactions(
    frame: pd.DataFrame,
    lines: np.ndarray,
    path: Path,
    policy: ErrorPolicy,
    cols: dict[str, str],
    ts_scale: int = 1000,
) -> pd.DataFrame:
    """Validate and convert user/item/rating/timestamp string columns (timestamps -> ms)."""
    for field in cols.values():
        if field not in frame.columns:
            raise DataError(path, 1, field, f"missing column (found: {', '.join(frame.columns)})")
    ts, ok_ts = numeric_column(frame, cols["timestamp"], lines, path, policy, "unix timestamp")
    rating, ok_r = numeric_column(frame, cols["rating"], lines, path, policy, "numeric rating")
    keep = ok_ts & ok_r
    out = pd.DataFrame(
        {
            "user_key": frame[cols["user"]].str.strip().to_numpy()[keep],
            "item_key": frame[cols["item"]].str.strip().to_numpy()[keep],
            "timestamp": (ts.to_numpy()[keep] * ts_scale).astype(np.int64),
            "rating": rating.to_numpy()[keep].astype(np.float64),
        }
    )
    empty = (out["user_key"] == "") | (out["item_key"] == "")
    if empty.any():
        pos = int(np.flatnonzero(empty.to_numpy())[0])
        field = cols["user"] if out["user_key"].iloc[pos] == "" else cols["item"]
        policy.bad(path, int(lines[keep][pos]), field, "empty id")
        out = out[~empty].reset_index(drop=True)
    return out


def _strip_atomic_types(frame: pd.DataFrame) -> pd.DataFrame:
    """RecBole atomic headers are `name:type`; keep only the names."""
    return frame.rename(columns={c: c.split(":", 1)[0] for c in frame.columns})


def read_recbole_atomic(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    """RecBole atomic files: `paths.inter` (+ optional `paths.item`), tab-separated, typed header."""
    inter_path = cfg.path("inter")
    frame, lines = read_delimited(inter_path, "\t", None, "utf-8", policy)
    frame = _strip_atomic_types(frame)
    cols = {"user": "user_id", "item": "item_id", "rating": "rating", "timestamp": "timestamp"}
    cols.update(cfg.options.get("columns", {}))
    inter = _interactions(frame, lines, inter_path, policy, cols)
    sources = [inter_path]
    rename: dict[str, str] = {"movie_title": "title", "release_year": "year", "class": "genres"}
    rename.update(cfg.options.get("rename", {}))
    items = pd.DataFrame({"item_key": pd.unique(inter["item_key"])})
    text_fields: list[str] = []
    item_path = cfg.path("item", required=False)
    if item_path is not None:
        table, _ = read_delimited(item_path, "\t", None, cfg.options.get("encoding", "utf-8"), policy)
        table = _strip_atomic_types(table).rename(columns=rename)
        table = table.rename(columns={cols["item"]: "item_key"})
        text_fields = [c for c in table.columns if c != "item_key"]
        items = table.drop_duplicates("item_key").replace({"": None})
        sources.append(item_path)
    items[IMAGE_COLUMN] = None
    return RawData(inter, items, text_fields, sources, [TIE_NOTE])


def _ml100k_items(path: Path, policy: ErrorPolicy) -> pd.DataFrame:
    names = ["item_key", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES]
    table, _ = read_delimited(path, "|", names, "latin-1", policy)
    flags = table[ML100K_GENRES].to_numpy() == "1"
    genres = [", ".join(np.array(ML100K_GENRES)[row]) for row in flags]
    return pd.DataFrame(
        {
            "item_key": table["item_key"].str.strip(),
            "title": table["title"].replace({"": None}),
            "release_date": table["release_date"].replace({"": None}),
            "genres": [g or None for g in genres],
        }
    )


def read_ml100k(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    """Original ML-100K: `paths.root` holding u.data (tab, no header) and u.item (|, latin-1)."""
    root = cfg.path("root")
    data_path = root / "u.data"
    frame, lines = read_delimited(data_path, "\t", ["user", "item", "rating", "timestamp"],
                                  "utf-8", policy)
    cols = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
    inter = _interactions(frame, lines, data_path, policy, cols)
    items = _ml100k_items(root / "u.item", policy)
    items[IMAGE_COLUMN] = None
    return RawData(inter, items, ["title", "release_date", "genres"],
                   [data_path, root / "u.item"], [TIE_NOTE])


def read_ml1m(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    """Original ML-1M: `paths.root` with ratings.dat and movies.dat (`::`-separated, latin-1)."""
    root = cfg.path("root")
    ratings = root / "ratings.dat"
    frame, lines = read_delimited(ratings, "::", ["user", "item", "rating", "timestamp"],
                                  "latin-1", policy)
    cols = {"user": "user", "item": "item", "rating": "rating", "timestamp": "timestamp"}
    inter = _interactions(frame, lines, ratings, policy, cols)
    movies, _ = read_delimited(root / "movies.dat", "::", ["item_key", "title", "genres"],
                               "latin-1", policy)
    movies["genres"] = movies["genres"].str.replace("|", ", ", regex=False)
    movies[IMAGE_COLUMN] = None
    return RawData(inter, movies.replace({"": None}), ["title", "genres"],
                   [ratings, root / "movies.dat"], [TIE_NOTE])


def _tmdb_genres(value: object) -> str | None:
    """TMDB genres are a Python-literal list of dicts; parse safely, never eval."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    names = [g.get("name") for g in parsed if isinstance(g, dict) and g.get("name")]
    return ", ".join(names) or None


def read_ml100k_tmdb(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    """ML-100K joined to TMDB text and posters through links.csv (the shared posters set).

    options.mask_wrong_links (default true) drops TMDB text and poster for the items that
    `tmdb_link_check.csv` marks `likely_wrong_link` (they describe another film).
    """
    root = cfg.path("root")
    raw = read_ml100k(cfg.model_copy(update={"paths": {"root": str(root / "ml-100k")}}), policy)
    links_path = root / "links.csv"
    links = pd.read_csv(links_path, dtype=str, keep_default_na=False).set_index("movie_id")
    features_path = root / "tmdb" / "item_features.csv"
    feats = pd.read_csv(features_path, dtype=str, keep_default_na=False)
    # item_features is one TMDB record per row (duplicated by an upstream cross join):
    # key it by TMDB id and reach it from the ML id through links.csv
    feats = feats.drop_duplicates("id").set_index("id")
    items = raw.items.set_index("item_key")
    tmdb_ids = links["tmdb_id"].reindex(items.index).replace({"": None})
    for column, source in (("overview", "overview"), ("tagline", "tagline")):
        items[column] = feats[source].reindex(tmdb_ids).replace({"": None}).to_numpy()
    items["tmdb_genres"] = feats["genres"].reindex(tmdb_ids).map(_tmdb_genres).to_numpy()
    posters = root / "posters"
    items[IMAGE_COLUMN] = [str(posters / f"{k}.jpg") for k in items.index]
    sources = [*raw.sources, links_path, features_path]
    notes = list(raw.notes)
    if cfg.options.get("mask_wrong_links", True):
        check_path = root / "tmdb_link_check.csv"
        check = pd.read_csv(check_path, dtype=str)
        wrong = check.loc[check["likely_wrong_link"] == "True", "movie_id"]
        wrong = wrong[wrong.isin(items.index)]
        items.loc[wrong, ["overview", "tagline", "tmdb_genres", IMAGE_COLUMN]] = None
        sources.append(check_path)
        notes.append(f"TMDB text and poster masked for {len(wrong)} likely wrong links")
    items = items.reset_index()
    fields = ["title", "release_date", "genres", "overview", "tagline", "tmdb_genres"]
    return RawData(raw.interactions, items, fields, sources, notes)

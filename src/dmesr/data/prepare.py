"""Preparation (SPEC §2): filter, deduplicate, k-core, order, re-index, split, negatives.

Everything is vectorised over NumPy arrays; no Python loop touches users or items.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmesr import __version__
from dmesr.data.dataset import PreparedDataset
from dmesr.data.images import check_images
from dmesr.data.readers import get_reader
from dmesr.data.schema import IMAGE_COLUMN, INTERACTION_COLUMNS, DatasetConfig, RawData
from dmesr.data.stats import compute_stats, stats_markdown
from dmesr.errors import ConfigError, EmptyResultError, ErrorPolicy
from dmesr.io import atomic_dir, save_npy, sha256_file, stable_hash, write_json

Log = Callable[[str], None]


@dataclass
class Funnel:
    """Row counts after each step, so a user sees where the data went."""

    steps: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: str, frame_len: int, users: int | None = None,
            items: int | None = None) -> None:
        self.steps.append({"step": step, "interactions": int(frame_len),
                           "users": users, "items": items})


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Factorise string keys -> (int64 codes, uniques)."""
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _natural_order(keys: np.ndarray) -> np.ndarray:
    """Order keys numerically when all are integers (ML ids), else lexicographically."""
    series = pd.Series(keys, dtype=str)
    numeric = pd.to_numeric(series, errors="coerce")
    if not numeric.isna().any():
        return np.argsort(numeric.to_numpy(), kind="stable")
    return np.argsort(series.to_numpy(dtype=str), kind="stable")


def dedup_mask(user: np.ndarray, item: np.ndarray, ts: np.ndarray, mode: str) -> np.ndarray:
    """Rows to keep; arrays must already be sorted by (user, ts, source order)."""
    n = len(user)
    if mode == "none" or n == 0:
        return np.ones(n, dtype=bool)
    same_user = np.r_[False, user[1:] == user[:-1]]
    if mode == "consecutive":
        return ~(same_user & np.r_[False, item[1:] == item[:-1]])
    if mode in ("exact", "user_item"):
        # a stable sort by (user, item) keeps the (ts, source) order inside each pair, so a
        # duplicate is a row equal to its predecessor; input sorted by user -> cheap timsort
        pair = user.astype(np.int64) * (int(item.max()) + 1) + item
        order = np.argsort(pair, kind="stable")
        p = pair[order]
        dup_sorted = np.r_[False, p[1:] == p[:-1]]
        if mode == "exact":
            t = ts[order]
            dup_sorted &= np.r_[False, t[1:] == t[:-1]]
        keep = np.ones(n, dtype=bool)
        keep[order[dup_sorted]] = False
        return keep
    raise ConfigError(f"unknown filter.dedup '{mode}'")


def kcore_mask(user: np.ndarray, item: np.ndarray, user_min: int, item_min: int,
               max_iterations: int) -> tuple[np.ndarray, int]:
    """Iterative k-core: drop users/items below their minimum until nothing changes."""
    keep = np.ones(len(user), dtype=bool)
    n_users, n_items = int(user.max(initial=-1)) + 1, int(item.max(initial=-1)) + 1
    for iteration in range(1, max_iterations + 1):
        u, i = user[keep], item[keep]
        ucount = np.bincount(u, minlength=n_users)
        icount = np.bincount(i, minlength=n_items)
        ok = (ucount[u] >= user_min) & (icount[i] >= item_min)
        if ok.all():
            return keep, iteration
        idx = np.flatnonzero(keep)
        keep[idx[~ok]] = False
    raise EmptyResultError(f"k-core did not converge in {max_iterations} iterations")


def sample_negatives(
    indptr: np.ndarray, items: np.ndarray, n_items: int, n_neg: int,
    rng: np.random.Generator, chunk_users: int = 65536,
) -> tuple[np.ndarray, int]:
    """Per user, `n_neg` distinct items never interacted with, uniform; row 0 = padding.

    Vectorised rejection sampling in user chunks (memory stays flat): draw candidates,
    drop interacted ones (binary search in the sorted (user, item) keys) and duplicates,
    then keep a uniformly random subset of the survivors. Rows that fall short are
    redrawn with more candidates; users with fewer than `n_neg` unseen items get all
    of them, padded with 0 (counted and returned).
    """
    n_users = len(indptr) - 2
    out = np.zeros((n_users + 1, n_neg), dtype=np.int32)
    lengths = np.diff(indptr)[1:]
    user_of = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)
    keys = sorted_unique(user_of * (n_items + 1) + items[indptr[1] :].astype(np.int64))
    # distinct items per user (a sequence may repeat an item)
    distinct = np.bincount(keys // (n_items + 1), minlength=n_users + 1)
    short = 0
    for start in range(1, n_users + 1, chunk_users):
        users = np.arange(start, min(start + chunk_users, n_users + 1))
        filled = _fill_chunk(users, distinct[users], keys, n_items, n_neg, rng, out)
        short += filled
    return out, short


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique without its hash path (several times slower on 10M int64 here)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _fill_chunk(users: np.ndarray, seen: np.ndarray, keys: np.ndarray, n_items: int,
                n_neg: int, rng: np.random.Generator, out: np.ndarray) -> int:
    free = n_items - seen
    short_rows = users[free < n_neg]
    for u in short_rows:  # rare: users who saw almost everything get every unseen item
        row = np.setdiff1d(np.arange(1, n_items + 1), _seen_items(keys, int(u), n_items))
        out[u, : len(row)] = rng.permutation(row)
    pending = users[free >= n_neg]
    factor = 1.3
    while pending.size:
        frac_free = (n_items - seen[np.searchsorted(users, pending)]).min() / n_items
        m = int(np.ceil(n_neg * factor / frac_free)) + 8
        cand = np.sort(rng.integers(1, n_items + 1, size=(len(pending), m), dtype=np.int64),
                       axis=1)
        wanted = pending[:, None] * (n_items + 1) + cand
        pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        unseen = keys[pos] != wanted
        first = np.c_[np.ones(len(pending), dtype=bool), cand[:, 1:] != cand[:, :-1]]
        valid = unseen & first
        # a uniformly random subset of the distinct unseen candidates
        priority = np.where(valid, rng.random(cand.shape), np.inf)
        pick = np.argsort(priority, axis=1)[:, :n_neg]
        enough = valid.sum(axis=1) >= n_neg
        out[pending[enough]] = np.take_along_axis(cand, pick, axis=1)[enough]
        pending = pending[~enough]
        factor *= 2
    return len(short_rows)


def _seen_items(keys: np.ndarray, user: int, n_items: int) -> np.ndarray:
    lo, hi = np.searchsorted(keys, [user * (n_items + 1), (user + 1) * (n_items + 1)])
    return keys[lo:hi] - user * (n_items + 1)


def _validate_raw(raw: RawData, fmt: str) -> None:
    missing = [c for c in INTERACTION_COLUMNS if c not in raw.interactions.columns]
    if missing:
        raise ConfigError(f"reader '{fmt}' returned interactions without columns {missing}")
    if "item_key" not in raw.items.columns:
        raise ConfigError(f"reader '{fmt}' returned items without 'item_key'")


@dataclass
class Prepared:
    """In-memory result before writing."""

    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    negatives: dict[str, np.ndarray]
    funnel: Funnel
    text_fields: list[str]
    short_negative_users: int
    kcore_iterations: int


def transform(raw: RawData, cfg: DatasetConfig, log: Log) -> Prepared:
    """The pure part of preparation: RawData -> ids, order, split, negatives."""
    _validate_raw(raw, cfg.format)
    funnel = Funnel()
    inter = raw.interactions
    funnel.add("read", len(inter))
    rating = inter["rating"].to_numpy(dtype=np.float64)
    keep = np.ones(len(inter), dtype=bool)
    if cfg.filter.rating_min is not None:
        if np.isnan(rating).all():
            raise ConfigError(f"filter.rating_min is set but '{cfg.name}' has no ratings")
        keep = rating >= cfg.filter.rating_min
    rule = "none" if cfg.filter.rating_min is None else f">= {cfg.filter.rating_min}"
    funnel.add(f"rating filter ({rule})", int(keep.sum()))
    user, user_keys = _codes(inter["user_key"][keep])
    item, item_keys = _codes(inter["item_key"][keep])
    ts = inter["timestamp"].to_numpy(dtype=np.int64)[keep]
    rating = rating[keep]
    # chronological, stable: ties in (user, timestamp) keep their source order
    order = np.lexsort((np.arange(len(user)), ts, user))
    user, item, ts, rating = user[order], item[order], ts[order], rating[order]
    dd = dedup_mask(user, item, ts, cfg.filter.dedup)
    user, item, ts, rating = user[dd], item[dd], ts[dd], rating[dd]
    funnel.add(f"dedup ({cfg.filter.dedup})", len(user))
    kc, iterations = kcore_mask(user, item, cfg.filter.user_min, cfg.filter.item_min,
                                cfg.filter.max_kcore_iterations)
    user, item, ts, rating = user[kc], item[kc], ts[kc], rating[kc]
    if len(user) == 0:
        raise EmptyResultError(
            f"dataset '{cfg.name}': nothing left after filtering "
            f"(rating_min={cfg.filter.rating_min}, dedup={cfg.filter.dedup}, "
            f"user_min={cfg.filter.user_min}, item_min={cfg.filter.item_min}); "
            f"funnel: {json.dumps(funnel.steps)}"
        )
    log(f"k-core converged after {iterations} iteration(s)")
    # contiguous 1-based ids in natural key order; 0 stays padding
    new_user, user_table = _reindex(user, user_keys, "user")
    new_item, item_table = _reindex(item, item_keys, "item")
    funnel.add(f"k-core (users>={cfg.filter.user_min}, items>={cfg.filter.item_min})",
               len(new_user), len(user_table), len(item_table))
    order = np.lexsort((np.arange(len(new_user)), new_user))  # regroup, order kept
    interactions = pd.DataFrame({
        "user": new_user[order].astype(np.int32), "item": new_item[order].astype(np.int32),
        "timestamp": ts[order], "rating": rating[order].astype(np.float32),
    })
    n_users, n_items = len(user_table), len(item_table)
    counts = np.bincount(interactions["user"].to_numpy(), minlength=n_users + 1)
    indptr = np.zeros(n_users + 2, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    seeds = np.random.SeedSequence(cfg.split.seed).spawn(2)
    negatives, short = {}, 0
    for name, seed in zip(("valid", "test"), seeds, strict=True):
        negatives[name], s = sample_negatives(indptr, interactions["item"].to_numpy(),
                                              n_items, cfg.split.n_negatives,
                                              np.random.default_rng(seed))
        short = max(short, s)
    offered = [c for c in raw.items.columns if c not in ("item_key", IMAGE_COLUMN)]
    text_fields = cfg.select_text_fields(offered, raw.text_fields)
    items = _item_table(raw, item_table, text_fields)
    return Prepared(interactions, user_table, items, negatives, funnel, text_fields, short,
                    iterations)


def _reindex(codes: np.ndarray, keys: np.ndarray, name: str) -> tuple[np.ndarray, pd.DataFrame]:
    present = np.flatnonzero(np.bincount(codes, minlength=len(keys)))
    ordered = present[_natural_order(keys[present])]
    new_id = np.zeros(len(keys), dtype=np.int64)
    new_id[ordered] = np.arange(1, len(ordered) + 1)
    table = pd.DataFrame({name: np.arange(1, len(ordered) + 1, dtype=np.int32),
                          f"{name}_key": keys[ordered].astype(str)})
    return new_id[codes], table


def _item_table(raw: RawData, item_table: pd.DataFrame, text_fields: list[str]) -> pd.DataFrame:
    meta = raw.items.drop_duplicates("item_key").set_index("item_key")
    cols = [*text_fields, IMAGE_COLUMN] if IMAGE_COLUMN in meta.columns else text_fields
    joined = meta[cols].reindex(item_table["item_key"].to_numpy())
    out = item_table.copy()
    for col in text_fields:
        values = joined[col].to_numpy(dtype=object)
        out[col] = pd.Series(values, dtype="string").replace("", pd.NA)
    refs = joined[IMAGE_COLUMN].to_numpy(dtype=object) if IMAGE_COLUMN in joined else None
    out[IMAGE_COLUMN] = pd.Series(refs if refs is not None else [None] * len(out),
                                  dtype="string")
    return out


# Folders that later stages keep inside a prepared dataset. Re-preparing carries them
# over: the enhancement cache is keyed by item key and prompt hash, so it stays valid, and
# feature views check the dataset hash themselves (and are rebuilt when stale).
KEPT_SUBFOLDERS = ("enhance", "features")


def up_to_date(cfg: DatasetConfig, out: Path) -> bool:
    """True when `out` was prepared by this version with these parameters from these bytes."""
    path = out / "manifest.json"
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
        same = (old.get("created_by") == f"dmesr {__version__}"
                and old.get("parameters") == cfg.model_dump(mode="json"))
        return same and all(
            Path(s["path"]).is_file() and Path(s["path"]).stat().st_size == s["bytes"]
            and sha256_file(s["path"]) == s["sha256"] for s in old["sources"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def prepare(cfg: DatasetConfig, out: str | Path, log: Log = print,
            progress: bool = True, force: bool = False) -> PreparedDataset:
    """Read, transform and write a dataset atomically; returns the prepared dataset.

    An output prepared from the same source bytes with the same parameters is reused
    unless `force`.
    """
    out = Path(out)
    if not force and up_to_date(cfg, out):
        log(f"{out} is up to date (same sources and parameters); use --force to rebuild")
        return PreparedDataset(out)
    t0 = time.perf_counter()
    policy = ErrorPolicy(cfg.on_error)
    log(f"[1/4] reading {cfg.name} ({cfg.format})")
    raw = get_reader(cfg.format)(cfg, policy)
    log(f"      {len(raw.interactions):,} interactions, {len(raw.items):,} item rows, "
        f"{policy.n_rejected:,} rejected ({time.perf_counter() - t0:.1f}s)")
    log("[2/4] filtering, k-core, split, negatives")
    prepared = transform(raw, cfg, log)
    log("[3/4] checking images")
    image_path, image_status = check_images(prepared.items[IMAGE_COLUMN], cfg.images,
                                            progress=progress)
    prepared.items = prepared.items.drop(columns=[IMAGE_COLUMN])
    prepared.items["image_path"] = pd.Series(image_path, dtype="string")
    prepared.items["image_status"] = pd.Series(image_status, dtype="string")
    log(f"[4/4] writing {out}")
    stats = compute_stats(prepared, raw, policy)
    with atomic_dir(out) as tmp:
        _write(tmp, cfg, raw, prepared, policy, stats)
        for name in KEPT_SUBFOLDERS:
            if (out / name).is_dir():
                (out / name).rename(tmp / name)
    log(stats_markdown(stats, cfg.name))
    log(f"prepared {cfg.name} in {time.perf_counter() - t0:.1f}s -> {out}")
    return PreparedDataset(out)


def _write(tmp: Path, cfg: DatasetConfig, raw: RawData, prepared: Prepared,
           policy: ErrorPolicy, stats: dict[str, Any]) -> None:
    prepared.interactions.to_parquet(tmp / "interactions.parquet", index=False)
    prepared.users.to_parquet(tmp / "users.parquet", index=False)
    prepared.items.to_parquet(tmp / "items.parquet", index=False)
    for name, arr in prepared.negatives.items():
        save_npy(tmp / f"negatives_{name}.npy", arr)
    if policy.rejects:
        with open(tmp / "rejects.jsonl", "w") as f:
            f.writelines(r.to_json() + "\n" for r in policy.rejects)
    data_files = ["interactions.parquet", "users.parquet", "items.parquet",
                  "negatives_valid.npy", "negatives_test.npy"]
    file_hashes = {name: sha256_file(tmp / name) for name in data_files}
    write_json(tmp / "stats.json", stats)
    (tmp / "stats.md").write_text(stats_markdown(stats, cfg.name) + "\n")
    manifest = {
        "name": cfg.name,
        "domain": cfg.domain,
        "format": cfg.format,
        "created_by": f"dmesr {__version__}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": [
            {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in raw.sources
        ],
        "parameters": cfg.model_dump(mode="json"),
        "text_fields": prepared.text_fields,
        "ordering": "stable sort by (user, timestamp, source row order)",
        "split": "leave-one-out: last item = test, second last = valid",
        "notes": raw.notes,
        "files": file_hashes,
        "content_hash": stable_hash(file_hashes),
        "stats": stats,
    }
    write_json(tmp / "manifest.json", manifest)

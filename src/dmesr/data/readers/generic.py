"""Generic reader: an interactions table (CSV/TSV/Parquet) + an optional items table + images.

This is the path of the large benchmarks, so the happy path is vectorised end to end:
pyarrow parses the files (every id as a string: H&M article ids keep their leading zero),
pyarrow compute validates and converts whole columns. Per-row Python runs only on the
error path: to find an editor line number for a bad value (a re-scan with the `csv`
module, which also gets quoted newlines right) or to re-read a file pyarrow cannot parse
(wrong field count, bad UTF-8, truncated gzip) row by row, reporting each bad row.

Line numbers: CSV header = line 1. Parquet has no lines: problems name the 1-based row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dmesr.data.readers._records import check_options, is_gzip, iter_lines
from dmesr.data.schema import IMAGE_COLUMN, ITEM_KEY, DatasetConfig, RawData
from dmesr.errors import ConfigError, DataError, ErrorPolicy

OPTIONS = ["columns", "timestamp_format", "item_id_column", "text_columns",
           "image_column", "image_template"]  # fmt: skip
ROLES = {"user": "user", "item": "item", "timestamp": "timestamp", "rating": "rating"}
NAMED_FORMATS = {"unix_s": "a unix time in seconds", "unix_ms": "a unix time in milliseconds",
                 "iso": "an ISO 8601 date-time"}  # fmt: skip
# map row positions (0-based, data rows) to editor lines; None where the file has no lines
LineMap = Callable[[np.ndarray], "np.ndarray | None"]


@dataclass
class Table:
    path: Path
    data: pa.Table  # the requested columns, as read
    line_of: LineMap


# ---------------------------------------------------------------- entry point


def read_generic(cfg: DatasetConfig, policy: ErrorPolicy) -> RawData:
    check_options(cfg, OPTIONS)
    cols = _column_map(cfg)
    ts_format = str(cfg.options.get("timestamp_format", "unix_s"))
    if ts_format not in NAMED_FORMATS and "%" not in ts_format:
        raise ConfigError(
            f"dataset '{cfg.name}': options.timestamp_format must be unix_s, unix_ms, iso or a "
            f"strftime format such as %Y-%m-%d; got {ts_format!r}"
        )
    inter_path = cfg.path("interactions")
    assert inter_path is not None
    rating_optional = "rating" not in (cfg.options.get("columns") or {})
    interactions, notes = _read_interactions(inter_path, policy, cols, ts_format, rating_optional)
    items_path = cfg.path("items", required=False)
    items, fields, item_notes = _read_items(cfg, items_path, inter_path, policy, cols["item"],
                                            interactions["item_key"])
    sources = [inter_path] + ([items_path] if items_path else [])
    return RawData(interactions, items, fields, sources, notes + item_notes)


def _column_map(cfg: DatasetConfig) -> dict[str, str | None]:
    given = cfg.options.get("columns") or {}
    if not isinstance(given, dict) or set(given) - set(ROLES):
        raise ConfigError(
            f"dataset '{cfg.name}': options.columns maps roles {', '.join(ROLES)} to column "
            f"names; got {given!r}"
        )
    cols: dict[str, str | None] = {**ROLES, **given}
    for role in ("user", "item", "timestamp"):
        if not cols[role]:
            raise ConfigError(f"dataset '{cfg.name}': options.columns.{role} cannot be empty")
    return cols


# ---------------------------------------------------------------- interactions


def _read_interactions(
    path: Path,
    policy: ErrorPolicy,
    cols: dict[str, str | None],
    ts_format: str,
    rating_optional: bool,
) -> tuple[pd.DataFrame, list[str]]:
    available = _columns_of(path, policy)
    if available is None:  # empty file, skipped in skip mode
        return _empty_interactions(), [f"{path.name} is empty"]
    rating_col = cols["rating"]
    if rating_col and rating_optional and rating_col not in available:
        rating_col = None  # the default name is absent: no ratings, not an error
    wanted = [c for c in (cols["user"], cols["item"], cols["timestamp"], rating_col) if c]
    _require(path, available, wanted)
    table = _read_table(path, policy, list(dict.fromkeys(wanted)))
    data = table.data
    user, bad_user = _ids(data[cols["user"]])
    item, bad_item = _ids(data[cols["item"]])
    ts, bad_ts, ts_what = _timestamps(data[cols["timestamp"]], ts_format)
    if rating_col:
        rating, bad_rating = _numbers(data[rating_col], allow_empty=True)
    else:
        rating, bad_rating = pa.nulls(len(data), pa.float64()), None
    issues = [
        (bad_user, cols["user"], "a non-empty id"),
        (bad_item, cols["item"], "a non-empty id"),
        (bad_ts, cols["timestamp"], ts_what),
        (bad_rating, rating_col, "a number"),
    ]
    keep = _report(policy, table, issues)
    frame = pd.DataFrame({
        "user_key": _strings(user, keep),
        "item_key": _strings(item, keep),
        "timestamp": _masked(ts, keep).to_numpy(zero_copy_only=False).astype(np.int64),
        "rating": _masked(rating, keep).to_numpy(zero_copy_only=False).astype(np.float64),
    })
    notes = [
        f"generic: {len(frame)} interactions from {path.name} "
        f"(columns {', '.join(f'{r}={c}' for r, c in cols.items() if c)}; "
        f"timestamps {ts_format}{'' if rating_col else '; no rating column'})",
        "ties in (user, timestamp) keep interactions-file order (stable sort)",
    ]
    if not pa.types.is_string(data[cols["item"]].type):
        notes.append(f"{cols['item']} was stored as {data[cols['item']].type}, not text: "
                     "ids with leading zeros cannot be recovered")
    return frame, notes


def _empty_interactions() -> pd.DataFrame:
    return pd.DataFrame({"user_key": pd.Series([], dtype=str), "item_key": pd.Series([], dtype=str),
                         "timestamp": pd.Series([], dtype="int64"),
                         "rating": pd.Series([], dtype="float64")})


# ---------------------------------------------------------------- column conversions
# Each returns (values, bad) where bad is a boolean array or None when nothing is bad.


def _ids(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray | None]:
    if not pa.types.is_string(col.type):
        col = pc.cast(col, pa.string())
    col = pc.utf8_trim_whitespace(col)
    bad = pc.fill_null(pc.equal(pc.utf8_length(col), 0), True)
    return col, _mask(bad)


def _mask(bad: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """A numpy mask, or None when no row is bad (the common case costs one `any`)."""
    if not pc.any(bad).as_py():
        return None
    return bad.to_numpy(zero_copy_only=False).astype(bool)


def _numbers(col: pa.ChunkedArray, allow_empty: bool) -> tuple[pa.ChunkedArray, np.ndarray | None]:
    """Float64 column; empty cells are NaN if `allow_empty`, anything unparsable is bad."""
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        values = pc.cast(col, pa.float64())
        return values, None if allow_empty else _mask(pc.is_null(values))
    text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    empty = pc.fill_null(pc.equal(text, ""), True)
    try:  # fast path: every non-empty cell parses
        values = pc.cast(pc.if_else(empty, None, text), pa.float64())
        bad = None
    except pa.ArrowInvalid:
        parsed = pd.to_numeric(pd.Series(text.to_numpy(zero_copy_only=False)), errors="coerce")
        values = pa.chunked_array([pa.array(parsed.to_numpy(np.float64))])
        bad = _mask(pc.and_not(pc.is_nan(values), empty))
    if not allow_empty:
        bad = _or(bad, _mask(empty))
    return values, bad


def _or(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return b if a is None else a
    return a | b


def _timestamps(col: pa.ChunkedArray, fmt: str) -> tuple[pa.ChunkedArray, np.ndarray | None, str]:
    """int64 milliseconds since the epoch (naive times are UTC)."""
    what = NAMED_FORMATS.get(fmt, f"a date-time in format {fmt}")
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        ms = pc.cast(pc.cast(col, pa.timestamp("ms", getattr(t, "tz", None))), pa.int64())
        return ms, _mask(pc.is_null(ms)), what
    if fmt in ("unix_s", "unix_ms"):
        scale = 1000 if fmt == "unix_s" else 1
        return (*_unix_ms(col, scale), what)
    text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    if fmt == "iso":
        parsed = pd.to_datetime(pd.Series(text.to_numpy(zero_copy_only=False)),
                                format="ISO8601", utc=True, errors="coerce")
        ms = pa.chunked_array([pa.array(parsed.to_numpy("datetime64[ms]").view(np.int64),
                                        mask=parsed.isna().to_numpy())])
    else:
        ms = pc.cast(pc.strptime(text, format=fmt, unit="ms", error_is_null=True), pa.int64())
    return ms, _mask(pc.is_null(ms)), what


def _unix_ms(col: pa.ChunkedArray, scale: int) -> tuple[pa.ChunkedArray, np.ndarray | None]:
    if pa.types.is_integer(col.type):
        ms = pc.multiply(pc.cast(col, pa.int64()), scale)
        return ms, _mask(pc.is_null(ms))
    if not pa.types.is_floating(col.type):
        try:  # integral seconds are the norm; parse as integers to keep full precision
            ms = pc.multiply(pc.cast(pc.utf8_trim_whitespace(col), pa.int64()), scale)
            return ms, _mask(pc.is_null(ms))
        except pa.ArrowInvalid:
            pass
    values, bad = _numbers(col, allow_empty=False)
    scaled = pc.round(pc.multiply(values, float(scale)))
    finite = pc.fill_null(pc.is_finite(scaled), False)
    ms = pc.cast(pc.if_else(finite, scaled, 0.0), pa.int64())
    return ms, _or(bad, _mask(pc.invert(finite)))


# ---------------------------------------------------------------- reporting


def _report(
    policy: ErrorPolicy, table: Table, issues: list[tuple[np.ndarray | None, str | None, str]]
) -> np.ndarray | None:
    """Report bad rows in file order (one reject per row, its first bad field); keep-mask."""
    issues = [(bad, f, w) for bad, f, w in issues if bad is not None and f]
    if not issues:
        return None
    any_bad = np.logical_or.reduce([bad for bad, _, _ in issues])
    positions = np.flatnonzero(any_bad)
    if policy.mode == "raise":
        positions = positions[:1]  # only the first is needed: it raises
    lines = table.line_of(positions)
    for k, pos in enumerate(positions):
        _, field, what = next(i for i in issues if i[0][pos])
        value = table.data[field][int(pos)].as_py()
        where = "" if lines is not None else f"row {pos + 1}: "
        line = int(lines[k]) if lines is not None else None
        record = {c: table.data[c][int(pos)].as_py() for c in table.data.column_names}
        policy.bad(table.path, line, field, f"{where}expected {what}, got {value!r}", record)
    return ~any_bad


def _masked(col: pa.ChunkedArray, keep: np.ndarray | None) -> pa.ChunkedArray:
    return col if keep is None else col.filter(pa.array(keep))


def _strings(col: pa.ChunkedArray, keep: np.ndarray | None) -> pd.Series:
    return pd.Series(_masked(col, keep).to_pandas(), dtype=str)


# ---------------------------------------------------------------- files


def _kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in (".parquet", ".pq"):
        return "parquet"
    if last in (".csv", ".tsv", ".tab"):
        return last[1:]
    raise ConfigError(f"{path}: cannot tell the format from the name; use .csv, .tsv "
                      "(optionally .gz) or .parquet")


def _dialect(path: Path) -> tuple[str, bool]:
    """(delimiter, quoted): CSV uses '"' quoting; TSV files are taken literally."""
    return (",", True) if _kind(path) == "csv" else ("\t", False)


def _columns_of(path: Path, policy: ErrorPolicy) -> list[str] | None:
    """Column names (the CSV header, or the Parquet schema); None for an empty CSV in skip mode."""
    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    if _kind(path) == "parquet":
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(path, None, None, f"not a readable Parquet file ({exc})") from None
    for _line, row in _csv_rows(path, policy, "a header line naming the columns"):
        return row
    return None


def _require(path: Path, available: list[str], wanted: list[str]) -> None:
    for col in wanted:
        if col not in available:
            line = None if _kind(path) == "parquet" else 1
            raise DataError(path, line, col,
                            f"column not found; available columns: {', '.join(available)}")


def _read_table(path: Path, policy: ErrorPolicy, columns: list[str]) -> Table:
    if _kind(path) == "parquet":
        try:
            data = pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(path, None, None, f"cannot read Parquet data ({exc})") from None
        return Table(path, data, lambda positions: None)
    data = _read_csv_fast(path, columns)
    if data is not None:
        return Table(path, data, lambda positions: _editor_lines(path, positions))
    data, lines = _read_csv_slow(path, policy, columns)
    return Table(path, data, lambda positions: lines[positions])


def _read_csv_fast(path: Path, columns: list[str]) -> pa.Table | None:
    """pyarrow's multi-threaded parser; None when it fails (the slow path says why)."""
    sep, quoted = _dialect(path)
    convert = pacsv.ConvertOptions(
        include_columns=columns,
        column_types={c: pa.string() for c in columns},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    # first without, then with quoted newlines (slower, needed by descriptions in CSV)
    for newlines in (False, True):
        parse = pacsv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False,
                                   newlines_in_values=newlines)
        try:
            stream = pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)
            with stream:
                return pacsv.read_csv(stream, parse_options=parse, convert_options=convert)
        except (pa.ArrowException, OSError, EOFError):
            continue
    return None


def _csv_rows(path: Path, policy: ErrorPolicy,
              expected: str = "a header line and data rows") -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, fields) for each CSV record; blank lines skipped like pyarrow."""
    sep, quoted = _dialect(path)
    consumed: list[int] = []

    def feed() -> Iterator[str]:
        for lineno, text in iter_lines(path, policy, skip_blank=False, expected=expected):
            consumed.append(lineno)
            yield text

    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    reader = csv.reader(feed(), delimiter=sep, quoting=quoting, strict=False)
    for row in reader:
        start = consumed[0]
        consumed.clear()
        if row:
            yield start, row


def _editor_lines(path: Path, positions: np.ndarray) -> np.ndarray:
    """Editor line of each data-row position (error path only: a re-scan in Python)."""
    wanted = {int(p) for p in positions}
    found: dict[int, int] = {}
    last = max(wanted, default=-1)
    for index, (line, _row) in enumerate(_csv_rows(path, ErrorPolicy("skip"))):
        if index - 1 in wanted:  # index 0 is the header
            found[index - 1] = line
        if index - 1 >= last:
            break
    return np.array([found.get(int(p), -1) for p in positions], dtype=np.int64)


def _read_csv_slow(path: Path, policy: ErrorPolicy,
                   columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """Row by row, reporting undecodable lines, wrong field counts and a truncated gzip."""
    rows = _csv_rows(path, policy)
    header = next(rows, (1, []))[1]
    index = [header.index(c) for c in columns]
    values: list[list[str]] = [[] for _ in columns]
    lines: list[int] = []
    for line, row in rows:
        if len(row) != len(header):
            policy.bad(path, line, None,
                       f"expected {len(header)} fields, got {len(row)}", row)
            continue
        for out, i in zip(values, index, strict=True):
            out.append(row[i])
        lines.append(line)
    data = pa.table({c: pa.array(v, pa.string()) for c, v in zip(columns, values, strict=True)})
    return data, np.array(lines, dtype=np.int64)


# ---------------------------------------------------------------- items


def _read_items(
    cfg: DatasetConfig,
    path: Path | None,
    inter_path: Path,
    policy: ErrorPolicy,
    inter_item_col: str | None,
    used: pd.Series,
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Items of the interactions (in items-file order), their text columns and image refs."""
    image_root = (cfg.path("image_root", required=False)
                  or (path or inter_path).parent).resolve()
    if path is None:
        return _items_without_table(cfg, used, image_root)
    id_col = str(cfg.options.get("item_id_column") or inter_item_col)
    available = _columns_of(path, policy)
    if available is None:
        return _items_without_table(cfg, used, image_root)
    _require(path, available, [id_col])
    image_col = cfg.options.get("image_column")
    if image_col:
        _require(path, available, [image_col])
    table = _read_table(path, policy, available)
    ids, bad = _ids(table.data[id_col])
    keep = _report(policy, table, [(bad, id_col, "a non-empty id")])
    used_keys = _unique(used)
    keep_used = pc.is_in(ids, value_set=used_keys).to_numpy(zero_copy_only=False)
    keep = keep_used if keep is None else keep & keep_used
    keep &= ~_duplicates(policy, table, ids, keep, id_col)
    rows = np.flatnonzero(keep)
    fields = _text_columns(cfg, table.data, id_col, image_col)
    frame = pd.DataFrame({ITEM_KEY: _strings(ids, keep)})
    for f in fields:
        frame[f] = _text(table.data[f].take(pa.array(rows)))
    frame[IMAGE_COLUMN] = _images(cfg, table.data, ids, rows, image_col, image_root)
    notes = [
        f"items: {len(frame)} of {len(table.data)} rows of {path.name} are interacted with; "
        f"{len(used_keys) - len(frame)} interacted items have no row (no text, no image)",
        f"text columns: {', '.join(fields) or '(none)'}",
    ]
    return frame, fields, notes


def _duplicates(policy: ErrorPolicy, table: Table, ids: pa.ChunkedArray, keep: np.ndarray,
                id_col: str) -> np.ndarray:
    """Mark repeated ids among kept rows (first row wins) and report each repeat."""
    series = pd.Series(ids.to_numpy(zero_copy_only=False)).where(keep)
    dup = (series.duplicated(keep="first") & series.notna()).to_numpy()
    if dup.any():
        positions = np.flatnonzero(dup)[: 1 if policy.mode == "raise" else None]
        lines = table.line_of(positions)
        for k, pos in enumerate(positions):
            value = series.iloc[pos]
            line = None if lines is None else int(lines[k])
            policy.bad(table.path, line, id_col,
                       f"{'' if lines is not None else f'row {pos + 1}: '}duplicate item id "
                       f"{value!r} (the first row with it is kept)", value)
    return dup


def _text_columns(cfg: DatasetConfig, data: pa.Table, id_col: str,
                  image_col: str | None) -> list[str]:
    """cfg.text_fields, else options.text_columns, else every textual column."""
    available = [c for c in data.column_names if c not in (id_col, image_col)]
    default = cfg.options.get("text_columns")
    if default is None:
        default = [c for c in available if _is_text(data[c])]
    return cfg.select_text_fields(available, list(default), noun="column")


def _is_text(col: pa.ChunkedArray) -> bool:
    """A string column that is not just numbers (CSV columns are all read as strings)."""
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        return False
    text = pc.utf8_trim_whitespace(col)
    try:
        pc.cast(pc.if_else(pc.equal(text, ""), None, text), pa.float64())
    except pa.ArrowInvalid:
        return True
    return False


def _text(col: pa.ChunkedArray) -> pd.Series:
    """str values, None where empty (missing text is masked downstream, never embedded)."""
    text = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    text = pc.if_else(pc.equal(text, ""), None, text)
    return pd.Series(text.to_pylist(), dtype=object)


_PLACEHOLDER = re.compile(r"\{(\w+)(?:\[(-?\d*):(-?\d*)\])?\}")


def _images(cfg: DatasetConfig, data: pa.Table | None, ids: pa.ChunkedArray, rows: np.ndarray,
            image_col: str | None, root: Path) -> pd.Series:
    template = cfg.options.get("image_template")
    if image_col and template:
        raise ConfigError(f"dataset '{cfg.name}': give options.image_column or "
                          "options.image_template, not both")
    if image_col:
        assert data is not None
        rel = data[image_col].take(pa.array(rows))
    elif template:
        rel = _fill_template(cfg, str(template), data, ids, rows)
    else:
        return pd.Series([None] * len(rows), dtype=object)
    return _resolve(rel, root)


def _fill_template(cfg: DatasetConfig, template: str, data: pa.Table | None,
                   ids: pa.ChunkedArray, rows: np.ndarray) -> pa.ChunkedArray:
    """`images/{item_key[0:3]}/{item_key}.jpg`: {col} and {col[a:b]}, col = item_key or a column."""
    taken = pa.array(rows)
    pieces: list[Any] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        pieces.append(template[pos:m.start()])
        name, start, stop = m.group(1), m.group(2), m.group(3)
        if name == ITEM_KEY:
            col = ids.take(taken)
        elif data is not None and name in data.column_names:
            col = pc.cast(data[name].take(taken), pa.string())
        else:
            known = [ITEM_KEY] + (data.column_names if data is not None else [])
            raise ConfigError(f"dataset '{cfg.name}': options.image_template names '{name}', "
                              f"which is not one of: {', '.join(known)}")
        if m.group(2) is not None:
            col = pc.utf8_slice_codeunits(col, start=int(start or 0),
                                          stop=int(stop) if stop else 2**31 - 1)
        pieces.append(col)
        pos = m.end()
    pieces.append(template[pos:])
    if "{" in "".join(p for p in pieces if isinstance(p, str)):
        raise ConfigError(f"dataset '{cfg.name}': options.image_template {template!r}: use "
                          "{column} or {column[a:b]} placeholders only")
    if len(rows) == 0:
        return pa.chunked_array([pa.array([], pa.string())])
    return pc.binary_join_element_wise(*pieces, "")


def _resolve(rel: pa.ChunkedArray, root: Path) -> pd.Series:
    """Absolute local paths (relative ones under `root`); URLs untouched; empty -> None."""
    text = pc.utf8_trim_whitespace(pc.cast(rel, pa.string()))
    keep_as_is = pc.or_(pc.match_substring(text, "://"), pc.starts_with(text, "/"))
    joined = pc.if_else(keep_as_is, text, pc.binary_join_element_wise(str(root), text, "/"))
    joined = pc.if_else(pc.equal(text, ""), None, joined)
    return pd.Series(joined.to_pylist(), dtype=object)


def _unique(keys: pd.Series) -> pa.Array:
    """Distinct keys in order of first appearance (Arrow's hash table keeps that order)."""
    return pc.unique(pa.array(keys, pa.string()))


def _items_without_table(cfg: DatasetConfig, used: pd.Series,
                         root: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    if cfg.text_fields or cfg.options.get("text_columns") or cfg.options.get("image_column"):
        raise ConfigError(f"dataset '{cfg.name}': text fields and image_column need paths.items")
    keys = _unique(used)
    ids = pa.chunked_array([keys])
    frame = pd.DataFrame({ITEM_KEY: pd.Series(keys.to_pandas(), dtype=str)})
    frame[IMAGE_COLUMN] = _images(cfg, None, ids, np.arange(len(keys)), None, root)
    return frame, [], ["items: no items table; items have no text"]

"""Shared plumbing for the JSON-lines readers (Amazon, Yelp) and text-field handling.

- files are plain or gzip, told apart by their magic bytes (names lie: `.json` files
  that are gzip and `.gz` names that are not both occur in the wild);
- every line is decoded strictly as UTF-8 (a bad byte is a bad record, never replaced);
- each line is JSON or, failing that, a Python literal (the Amazon 2014 metadata are
  `{'asin': ...}` dicts), parsed with `ast.literal_eval`, never `eval`;
- line numbers are what an editor shows: 1-based, blank lines counted.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import math
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from dmesr.data.schema import IMAGE_COLUMN, ITEM_KEY, DatasetConfig
from dmesr.errors import ConfigError, ErrorPolicy

GZIP_MAGIC = b"\x1f\x8b"
# what a cut-off or damaged gzip stream raises while being read
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
_MISSING = object()


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: Path) -> IO[bytes]:
    """Open a file for binary reading, decompressing it when it starts with the gzip magic."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def iter_lines(
    path: Path,
    policy: ErrorPolicy,
    skip_blank: bool = True,
    expected: str = "one JSON object per line",
) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each line (non-blank ones if `skip_blank`).

    Undecodable lines and a truncated gzip stream are reported through `policy`; in skip
    mode the lines read before a truncation are kept (the truncation is one reject).
    An empty file (no non-blank line at all) is reported as a bad line 1.
    """
    if not path.is_file():
        raise ConfigError(f"input file not found: {path}")
    lineno = 0
    seen_content = False
    with open_binary(path) as f:
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _STREAM_ERRORS as exc:
                policy.bad(
                    path, lineno, None,
                    f"compressed stream ends abruptly after line {lineno} (file truncated or "
                    f"corrupt: {exc}); the {lineno} line(s) before it were read",
                )
                return
            lineno += 1
            text = _decode(raw, path, lineno, policy)
            if text is None:
                seen_content = True
                continue
            if text.strip():
                seen_content = True
                yield lineno, text
            elif not skip_blank:
                yield lineno, text
    if not seen_content:
        policy.bad(path, 1, None, f"file is empty: expected {expected}")


def _decode(raw: bytes, path: Path, lineno: int, policy: ErrorPolicy) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        policy.bad(
            path, lineno, None,
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
            "line); re-encode the file as UTF-8",
            raw[:300],
        )
        return None
    # a UTF-8 byte-order mark is legal at the start of a file but not inside JSON
    return text[1:] if lineno == 1 and text.startswith("\ufeff") else text


def parse_record(text: str, allow_literal: bool = True) -> Any:
    """JSON first; a Python literal as fallback. Raises ValueError with a short reason."""
    try:
        return json.loads(text)
    except ValueError as json_exc:
        if not allow_literal:
            raise ValueError(f"not valid JSON ({json_exc})") from None
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError(
                f"neither valid JSON ({json_exc}) nor a Python literal"
            ) from None


def iter_records(
    path: Path, policy: ErrorPolicy, allow_literal: bool = True
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, dict) for each record; unparsable lines go to `policy`."""
    for lineno, text in iter_lines(path, policy):
        try:
            record = parse_record(text, allow_literal)
        except ValueError as exc:
            policy.bad(path, lineno, None, str(exc), text)
            continue
        if not isinstance(record, dict):
            policy.bad(
                path, lineno, None,
                f"expected an object {{...}} per line, got {type(record).__name__}", text,
            )
            continue
        yield lineno, record


def fast_table(path: Path, fields: dict[str, pa.DataType]) -> pa.Table | None:
    """The named fields of a strict-JSON-lines file via pyarrow's parser (~3x faster).

    Returns None on anything unusual: a Python-literal line, a type clash, bad UTF-8 in a
    field we use, a truncated stream, an empty file, a missing or empty value. The caller
    then re-reads line by line, which finds and reports the exact line.
    """
    options = pajson.ParseOptions(explicit_schema=pa.schema(list(fields.items())),
                                  unexpected_field_behavior="ignore")
    try:
        with pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None) as f:
            table = pajson.read_json(f, parse_options=options)
        table.validate(full=True)  # the JSON parser lets invalid UTF-8 into strings
    except (pa.ArrowException, OSError, EOFError, ValueError):
        return None
    for name, kind in fields.items():
        col = table[name]
        if col.null_count or (pa.types.is_floating(kind) and not pc.all(pc.is_finite(col)).as_py()):
            return None
        if pa.types.is_string(kind):
            trimmed = pc.utf8_trim_whitespace(col)
            if pc.any(pc.equal(pc.utf8_length(trimmed), 0)).as_py():
                return None
            table = table.set_column(table.schema.get_field_index(name), name, trimmed)
    return table if table.num_rows else None


def fast_frame(table: pa.Table, user: str, item: str, rating: str,
               time_ms: pa.ChunkedArray) -> pd.DataFrame:
    return pd.DataFrame({
        "user_key": pd.Series(table[user].to_pandas(), dtype=str),
        "item_key": pd.Series(table[item].to_pandas(), dtype=str),
        "timestamp": time_ms.to_numpy().astype("int64"),
        "rating": table[rating].to_numpy().astype("float64"),
    })


class Bad(Exception):
    """A field of one record is unusable; carries the field name for the report."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def get(record: Mapping[str, Any], key: str) -> Any:
    """record[key], or `Bad` naming the key and the keys the record does have."""
    value = record.get(key, _MISSING)
    if value is _MISSING:
        raise Bad(key, f"missing (the record has: {', '.join(map(str, record))})")
    return value


def as_id(record: Mapping[str, Any], key: str) -> str:
    value = get(record, key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Bad(key, f"expected a non-empty string id, got {value!r}")
    text = str(value).strip()
    if not text:
        raise Bad(key, f"expected a non-empty string id, got {value!r}")
    return text


def as_float(record: Mapping[str, Any], key: str) -> float:
    value = get(record, key)
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise Bad(key, f"expected a number, got {value!r}")
    return number


def as_int(record: Mapping[str, Any], key: str, what: str) -> int:
    """An integer (e.g. a unix time); integral floats and digit strings are accepted."""
    value = get(record, key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise Bad(key, f"expected {what}, got {value!r}")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def as_datetime_ms(record: Mapping[str, Any], key: str, fmt: str, example: str) -> int:
    """A naive date-time string in format `fmt`, read as UTC, in milliseconds."""
    value = get(record, key)
    try:
        moment = datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        raise Bad(key, f"expected a date-time like '{example}', got {value!r}") from None
    return (moment - _EPOCH) // _MS


_MS = datetime(1970, 1, 1, 0, 0, 0, 1000) - datetime(1970, 1, 1)


# ---------------------------------------------------------------- text

_TAG = re.compile(r"<[^>]{0,500}>")
_SPACE = re.compile(r"\s+")


def clean_text(value: Any, sep: str = " ") -> str | None:
    """Readable text from a metadata value: lists joined, HTML tags/entities removed.

    Amazon 2018 descriptions and titles carry HTML; an empty result is None so that a
    missing field stays missing (it is masked downstream, never embedded as "").
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        parts = [clean_text(v, sep) for v in value]
        joined = sep.join(dict.fromkeys(p for p in parts if p))  # dedup, keep order
        return joined or None
    if isinstance(value, dict):
        return clean_text([f"{k}: {clean_text(v, ', ') or ''}".rstrip(": ") for k, v in value.items()],
                          "; ")
    text = _SPACE.sub(" ", _TAG.sub(" ", html.unescape(str(value)))).strip()
    return text or None


def check_options(cfg: DatasetConfig, allowed: Iterable[str]) -> None:
    """Unknown `options` keys are errors, so a typo never passes silently."""
    allowed = list(allowed)
    unknown = sorted(set(cfg.options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"dataset '{cfg.name}' (format {cfg.format}): unknown option(s) "
            f"{', '.join(unknown)}; known: {', '.join(allowed) or '(none)'}"
        )


def report(policy: ErrorPolicy, path: Path, lineno: int, exc: Bad, record: Any) -> None:
    policy.bad(path, lineno, exc.field, exc.message, record)


def items_frame(keys: list[str], texts: dict[str, list[str | None]],
                images: list[str | None]) -> pd.DataFrame:
    """The `RawData.items` frame: item_key, the text columns in order, image_ref."""
    data: dict[str, Any] = {ITEM_KEY: pd.Series(keys, dtype=str)}
    for name, values in texts.items():
        data[name] = pd.Series(values, dtype=object)
    data[IMAGE_COLUMN] = pd.Series(images, dtype=object)
    return pd.DataFrame(data)


def interactions_frame(users: list[str], items: list[str], times: list[int],
                       ratings: list[float]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_key": pd.Series(users, dtype=str),
        "item_key": pd.Series(items, dtype=str),
        "timestamp": pd.Series(times, dtype="int64"),
        "rating": pd.Series(ratings, dtype="float64"),
    })

"""Shared helpers for delimited text files: vectorised parsing, precise error locations."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dmesr.errors import DataError, ErrorPolicy


def line_of_byte(path: Path, offset: int) -> int:
    """1-based line number containing byte `offset` of a file."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def read_text_strict(path: Path, encoding: str) -> str:
    """Decode a whole file strictly; a bad byte becomes a DataError with its line."""
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            path, line, None, f"bytes are not valid {encoding} ({exc.reason} at byte {exc.start})"
        ) from None


def read_delimited(
    path: Path,
    sep: str,
    names: list[str] | None,
    encoding: str = "utf-8",
    policy: ErrorPolicy | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Read a delimited file as strings. Returns the frame and each row's editor line number.

    names=None means the first line is a header. Rows with the wrong number of fields are
    reported through `policy` (file, line) and dropped in skip mode.
    """
    policy = policy or ErrorPolicy()
    text = read_text_strict(path, encoding)
    if not text.strip():
        policy.bad(path, 1, None, "file is empty")
        return pd.DataFrame(columns=names or []), np.zeros(0, dtype=np.int64)
    header_lines = 0 if names is not None else 1
    multichar = len(sep) > 1
    reader_kwargs = dict(
        sep=re.escape(sep) if multichar else sep,
        engine="python" if multichar else "c",
        header=None if names is not None else 0,
        names=names,
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE if multichar or sep in "\t|" else csv.QUOTE_MINIMAL,
        skip_blank_lines=False,
    )
    lines_all = text.split("\n")
    if lines_all and lines_all[-1] == "":
        lines_all.pop()
    expected = len(names) if names is not None else lines_all[0].count(sep) + 1
    bad_rows = _rows_with_wrong_field_count(lines_all[header_lines:], sep, expected)
    if bad_rows.size:
        for idx in bad_rows:
            line_no = int(idx) + header_lines + 1
            policy.bad(
                path, line_no, None,
                f"expected {expected} fields separated by {sep!r}, "
                f"got {lines_all[idx + header_lines].count(sep) + 1}",
                lines_all[idx + header_lines],
            )
        keep = np.ones(len(lines_all) - header_lines, dtype=bool)
        keep[bad_rows] = False
        body = [ln for ln, k in zip(lines_all[header_lines:], keep, strict=True) if k]
        text = "\n".join(lines_all[:header_lines] + body) + "\n"
        line_numbers = np.flatnonzero(keep) + header_lines + 1
    else:
        line_numbers = np.arange(len(lines_all) - header_lines) + header_lines + 1
    frame = pd.read_csv(io.StringIO(text), **reader_kwargs)
    return frame, line_numbers.astype(np.int64)


def _rows_with_wrong_field_count(lines: list[str], sep: str, expected: int) -> np.ndarray:
    counts = np.fromiter((ln.count(sep) for ln in lines), dtype=np.int64, count=len(lines))
    return np.flatnonzero(counts != expected - 1)


def numeric_column(
    frame: pd.DataFrame,
    column: str,
    lines: np.ndarray,
    path: Path,
    policy: ErrorPolicy,
    kind: str = "number",
) -> tuple[pd.Series, np.ndarray]:
    """Parse a string column as numbers; bad values are reported with their line.

    Returns the parsed column and a keep-mask (False for rejected rows).
    """
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna().to_numpy()
    # only bad rows are visited; in raise mode the first one stops the run, in skip mode
    # the policy counts every one and keeps a bounded sample
    for pos in np.flatnonzero(bad):
        policy.bad(
            path, int(lines[pos]), column,
            f"expected a {kind}, got {frame[column].iloc[pos]!r}", frame.iloc[pos].to_dict(),
        )
    return values, ~bad

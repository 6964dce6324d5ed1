"""Append-only JSON-lines cache of generated descriptions, one file per (model, view).

Crash safety without a database:
- every record is one line written by a single `os.write` on an O_APPEND descriptor, so
  a line is either entirely in the file or (killed mid-write) a torn tail without "\\n";
- the file is fsync'ed every `fsync_every` lines or `fsync_interval_s` seconds and on
  close, so kill -9 loses at most the requests in flight (and a power cut at most the
  last interval);
- readers ignore a torn last line; the next writer truncates it before appending;
- an exclusive `flock` on a sibling `.lock` file stops two runs writing one cache (the
  kernel drops it when a process dies, so a killed run never leaves a stale lock).

Records are keyed by (item key, prompt hash); the latest line for a key wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmesr.errors import DmesrError

Key = tuple[str, str]  # (item_key, prompt_hash)


@dataclass
class CacheContents:
    records: dict[Key, dict[str, Any]] = field(default_factory=dict)
    lines: int = 0
    bad_lines: int = 0  # unparsable complete lines (should not happen; counted, skipped)
    torn_tail: bool = False  # a partial last line (a killed writer); ignored

    def get(self, item_key: str, prompt_hash: str) -> dict[str, Any] | None:
        return self.records.get((item_key, prompt_hash))


def read_cache(path: str | Path) -> CacheContents:
    out = CacheContents()
    path = Path(path)
    if not path.exists():
        return out
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                out.torn_tail = True
                break
            out.lines += 1
            try:
                rec = json.loads(raw)
                out.records[(str(rec["key"]), str(rec["prompt_hash"]))] = rec
            except (ValueError, KeyError, TypeError):
                out.bad_lines += 1
    return out


def _repair_tail(fd: int) -> int:
    """Truncate a torn last line; returns the number of bytes removed."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    pos, chunk = size, 1 << 16
    while pos > 0:
        start = max(0, pos - chunk)
        block = os.pread(fd, pos - start, start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            keep = start + nl + 1
            os.ftruncate(fd, keep)
            return size - keep
        pos = start
    os.ftruncate(fd, 0)
    return size


class CacheWriter:
    """Appends records to one cache file; use as a context manager."""

    def __init__(self, path: str | Path, fsync_every: int = 32, fsync_interval_s: float = 2.0):
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.fsync_interval_s = fsync_interval_s
        self.repaired_bytes = 0
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def __enter__(self) -> CacheWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.path.with_name(self.path.name + ".lock"),
                                os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise DmesrError(
                f"{self.path} is being written by another process (another `dmesr enhance` "
                "on the same data and model?); wait for it or stop it"
            ) from None
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.repaired_bytes = _repair_tail(self._fd)
        return self

    def append(self, record: dict[str, Any]) -> None:
        assert self._fd is not None, "use CacheWriter as a context manager"
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):  # only on a full disk or similar; never leave half a line
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OSError(f"short write to {self.path} ({written}/{len(line)} bytes)")
        self._unsynced += 1
        if (self._unsynced >= self.fsync_every
                or time.monotonic() - self._last_sync >= self.fsync_interval_s):
            self.sync()

    def sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0
            self._last_sync = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None


def cache_path(root: Path, view: str) -> Path:
    return root / f"{view}.jsonl"


@contextlib.contextmanager
def writers(root: Path, views: list[str], **kw: Any) -> Iterator[dict[str, CacheWriter]]:
    with contextlib.ExitStack() as stack:
        yield {v: stack.enter_context(CacheWriter(cache_path(root, v), **kw)) for v in views}

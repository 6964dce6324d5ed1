"""Error types and the bad-record policy shared by every reader."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OnError = Literal["raise", "skip"]


class DmesrError(Exception):
    """Base class for errors a user can act on (shown without a traceback by the CLI)."""


class ConfigError(DmesrError):
    """A configuration file or override is invalid."""


class DataError(DmesrError):
    """A bad input record: names the file, the 1-based line (header included) and the field."""

    def __init__(
        self, file: str | Path, line: int | None, field: str | None, message: str
    ) -> None:
        self.file = str(file)
        self.line = line
        self.field = field
        self.message = message
        where = self.file if line is None else f"{self.file}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class EmptyResultError(DmesrError):
    """Filtering left nothing (or too little) to build a dataset from."""


class ArtifactMismatchError(DmesrError):
    """A stored artefact does not belong to the dataset or configuration it is used with."""


@dataclass
class Reject:
    file: str
    line: int | None
    field: str | None
    message: str
    record: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)


@dataclass
class ErrorPolicy:
    """What readers do with a bad record: stop with a `DataError` or skip and remember it.

    Readers call `bad(...)` for every bad record; in `raise` mode it raises, in `skip`
    mode it records the reject (written to `rejects.jsonl` by the caller) and returns.
    """

    mode: OnError = "raise"
    rejects: list[Reject] = field(default_factory=list)
    max_samples_kept: int = 100_000
    n_rejected: int = 0

    def bad(
        self,
        file: str | Path,
        line: int | None,
        field: str | None,
        message: str,
        record: Any = None,
    ) -> None:
        if self.mode == "raise":
            raise DataError(file, line, field, message)
        if len(self.rejects) < self.max_samples_kept:
            raw = None if record is None else str(record)[:2000]
            self.rejects.append(Reject(str(file), line, field, message, raw))
        self.n_rejected += 1

    def counts_by_file(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rejects:
            out[r.file] = out.get(r.file, 0) + 1
        return out

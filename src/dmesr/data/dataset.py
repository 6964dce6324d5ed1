"""Read-only access to a prepared dataset directory (written by `dmesr prepare`).

Layout of a prepared directory:
  interactions.parquet  user (int32, 1..U), item (int32, 1..I), timestamp (int64 ms),
                        rating (float32, NaN if absent); sorted by user, then time,
                        ties kept in source order (stable sort).
  users.parquet         user, user_key (the source id)
  items.parquet         item, item_key, one column per text field, image_path (abs or None),
                        image_status ("ok" | "missing" | "unreadable" | "none")
  negatives_valid.npy   int32 [U + 1, n_neg]; row u = user u's negatives, row 0 = zeros
  negatives_test.npy    same for test
  stats.json / stats.md statistics; manifest.json: sources, parameters, stats, content_hash
Leave-one-out: for a user sequence s, train = s[:-2], valid target s[-2] (history
s[:-2]), test target s[-1] (history s[:-1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dmesr.errors import ArtifactMismatchError, DmesrError
from dmesr.io import load_npy, read_json

if TYPE_CHECKING:
    import pandas as pd

Split = Literal["train", "valid", "test", "all"]


@dataclass(frozen=True)
class SplitView:
    """Histories and targets of one split, as CSR arrays (no Python lists of sequences).

    `history(u)` = items[indptr[u]:indptr[u+1]] for the row u (0-based row, user = users[u]).
    """

    users: np.ndarray  # int64 [n] user ids
    indptr: np.ndarray  # int64 [n + 1]
    items: np.ndarray  # int32 concatenated histories
    targets: np.ndarray  # int32 [n]; 0 for the train split (targets are inside sequences)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def padded(self, max_len: int, left: bool = True) -> np.ndarray:
        """[n, max_len] int64 matrix of the last `max_len` items, 0-padded (left by default)."""
        n = len(self.users)
        out = np.zeros((n, max_len), dtype=np.int64)
        lengths = np.minimum(self.lengths, max_len)
        # position of each kept item inside its row, vectorised
        ends = self.indptr[1:]
        starts = ends - lengths
        row = np.repeat(np.arange(n), lengths)
        offs = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        src = np.repeat(starts, lengths) + offs
        col = (max_len - np.repeat(lengths, lengths) + offs) if left else offs
        out[row, col] = self.items[src]
        return out


class PreparedDataset:
    """A prepared dataset directory. Cheap to open; arrays load lazily."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest_path = self.root / "manifest.json"
        if not manifest_path.is_file():
            raise DmesrError(
                f"{self.root} is not a prepared dataset (no manifest.json); "
                "run `dmesr prepare` first"
            )
        self.manifest: dict[str, Any] = read_json(manifest_path)
        stats = self.manifest["stats"]
        self.n_users: int = int(stats["users"])
        self.n_items: int = int(stats["items"])
        self.name: str = self.manifest.get("name", self.root.name)

    @property
    def content_hash(self) -> str:
        """sha256 over the data files: what downstream artefacts record and check."""
        return str(self.manifest["content_hash"])

    @property
    def text_fields(self) -> list[str]:
        return list(self.manifest["text_fields"])

    @property
    def domain(self) -> str:
        return str(self.manifest.get("domain", "item"))

    def check_hash(self, expected: str, what: str) -> None:
        if expected != self.content_hash:
            raise ArtifactMismatchError(
                f"{what} was built for dataset hash {expected[:12]}…, but {self.root} has "
                f"{self.content_hash[:12]}…; rebuild it for this dataset"
            )

    # pandas is imported only where a table is asked for: training and evaluation read
    # the two id columns through pyarrow, which keeps ~100 MB of pandas out of their RSS
    @cached_property
    def interactions(self) -> pd.DataFrame:
        return _read_table(self.root / "interactions.parquet")

    @cached_property
    def items(self) -> pd.DataFrame:
        return _read_table(self.root / "items.parquet")

    @cached_property
    def users(self) -> pd.DataFrame:
        return _read_table(self.root / "users.parquet")

    @cached_property
    def _csr(self) -> tuple[np.ndarray, np.ndarray]:
        """indptr [U + 2] (row 0 = padding user) and items, full chronological sequences."""
        users, items = _id_columns(self.root / "interactions.parquet", ["user", "item"])
        counts = np.bincount(users, minlength=self.n_users + 1)
        indptr = np.zeros(self.n_users + 2, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, items

    @property
    def seq_indptr(self) -> np.ndarray:
        return self._csr[0]

    @property
    def seq_items(self) -> np.ndarray:
        return self._csr[1]

    def split(self, name: Split) -> SplitView:
        """Histories (and targets) for one leave-one-out split, for every user 1..U;
        "all" is every known interaction (what serving recommends after), no targets."""
        indptr, items = self._csr
        users = np.arange(1, self.n_users + 1, dtype=np.int64)
        starts, ends = indptr[1:-1], indptr[2:]
        drop = {"train": 2, "valid": 2, "test": 1, "all": 0}[name]
        hist_ends = ends - drop
        lengths = hist_ends - starts
        mask = np.zeros(len(items), dtype=bool)
        # mark history positions: for each user the range [start, hist_end)
        idx = np.repeat(starts, lengths) + (
            np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        mask[idx] = True
        new_indptr = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(lengths, out=new_indptr[1:])
        if name in ("train", "all"):
            targets = np.zeros(len(users), dtype=np.int32)
        else:
            targets = items[hist_ends]
        return SplitView(users, new_indptr, items[mask], targets.astype(np.int32))

    def negatives(self, name: Literal["valid", "test"]) -> np.ndarray:
        """int32 [U + 1, n_neg] saved negatives; row u belongs to user u (row 0 unused)."""
        arr = load_npy(self.root / f"negatives_{name}.npy")
        if arr.shape[0] != self.n_users + 1:
            raise ArtifactMismatchError(
                f"{self.root}/negatives_{name}.npy has {arr.shape[0]} rows, "
                f"expected {self.n_users + 1}"
            )
        return arr

    def train_item_popularity(self) -> np.ndarray:
        """int64 [I + 1] interaction counts in the training part (for tail/head groups)."""
        tr = self.split("train")
        return np.bincount(tr.items, minlength=self.n_items + 1)


def _id_columns(path: Path, names: list[str]) -> list[np.ndarray]:
    """int32 id columns of a prepared parquet file as numpy arrays, without pandas.

    pyarrow's `read_table` and `to_numpy` both import pandas (~100 MB of RSS in every
    training process); `ParquetFile.read` and the raw data buffers do not.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path).read(columns=names, use_pandas_metadata=False)
    out = []
    for name in names:
        parts = []
        for chunk in table.column(name).chunks:
            if chunk.type != pa.int32() or chunk.null_count:
                raise ArtifactMismatchError(
                    f"{path}: column '{name}' must be int32 without nulls, got {chunk.type} "
                    f"with {chunk.null_count} nulls; prepare the dataset again")
            data = np.frombuffer(chunk.buffers()[1], dtype=np.int32)
            parts.append(data[chunk.offset:chunk.offset + len(chunk)])
        out.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32))
    return out


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(path)

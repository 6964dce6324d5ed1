"""Shared fixtures: real data location (skip when absent) and a tiny prepared dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_data_root() -> Path:
    return Path(os.environ.get("DMESR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (or $DMESR_SHARED_DATA); skips the test with a reason when absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not available: {root} is absent (set DMESR_SHARED_DATA)")
    return root


def write_atomic_files(folder: Path, n_users: int = 40, n_items: int = 60,
                       seed: int = 0) -> tuple[Path, Path]:
    """Synthetic RecBole atomic files with a learnable structure (item i is often followed by i+1)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, n_users + 1):
        length = int(rng.integers(8, 20))
        start = int(rng.integers(1, n_items + 1))
        for t in range(length):
            item = (start + t - 1) % n_items + 1 if rng.random() < 0.8 else int(
                rng.integers(1, n_items + 1))
            lines.append(f"u{u}\ti{item}\t{int(rng.integers(1, 6))}\t{1_000_000 + 60 * t}")
    inter = folder / "tiny.inter"
    inter.write_text("\n".join(lines) + "\n")
    item_lines = ["item_id:token\tmovie_title:token_seq\tclass:token_seq"]
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance"]
    item_lines += [f"i{i}\tMovie number {i}\t{genres[i % 5]} {genres[(i * 7) % 5]}"
                   for i in range(1, n_items + 1)]
    item = folder / "tiny.item"
    item.write_text("\n".join(item_lines) + "\n")
    return inter, item


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    """A prepared synthetic dataset (40 users, ≤60 items, text fields, no images)."""
    from dmesr.data.prepare import prepare
    from dmesr.data.schema import DatasetConfig

    root = tmp_path_factory.mktemp("tiny")
    inter, item = write_atomic_files(root / "raw")
    cfg = DatasetConfig(
        name="tiny", format="recbole_atomic", domain="movie",
        paths={"inter": str(inter), "item": str(item)},
        filter={"user_min": 5, "item_min": 2}, split={"n_negatives": 20, "seed": 1},
    )
    return prepare(cfg, root / "prepared", log=lambda _: None, progress=False)

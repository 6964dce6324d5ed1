"""Shared fixtures: real data location (skip when absent) and a tiny prepared dataset."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dmesr.enhance.testing import RecordingServer, make_prepared
from support import REPO, write_atomic_files

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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


# ---- Stage A: fake prepared data with images, recording OpenAI-compatible servers ----
@pytest.fixture
def fake_data(tmp_path):
    """6 items; items 1, 3, 5 have an image; item 2 has no genres."""
    return make_prepared(tmp_path / "prepared")


@pytest.fixture
def servers() -> Iterator[Callable[..., RecordingServer]]:
    """Factory of started RecordingServers, all stopped at the end of the test."""
    started: list[RecordingServer] = []

    def make(**kw) -> RecordingServer:
        s = RecordingServer(**kw).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()

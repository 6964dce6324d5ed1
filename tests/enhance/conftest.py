"""Fixtures for Stage A tests: fake prepared data with images, recording HTTP servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dmesr.enhance.testing import RecordingServer, make_prepared


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

"""dmesr.io.read_jsonl: a killed writer's last line is dropped, corruption is not."""

from __future__ import annotations

import pytest

from dmesr.errors import DmesrError
from dmesr.io import read_jsonl, write_text


def test_half_written_last_line_is_dropped(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1}\n\n{"epoch": 2}\n{"epoch": 3, "lo')
    assert read_jsonl(log) == [{"epoch": 1}, {"epoch": 2}]


def test_a_bad_line_before_the_last_names_file_and_line(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2\n{"epoch": 3}\n')
    with pytest.raises(DmesrError, match=r"log.jsonl: line 2 is not JSON"):
        read_jsonl(log)


def test_write_text_replaces_the_file_whole_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n" * 100)
    write_text(path, "new: 2\n")
    assert path.read_text() == "new: 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]

from __future__ import annotations

import json
import os

import pytest

from dmesr.enhance.cache import CacheWriter, read_cache
from dmesr.errors import DmesrError


def rec(key: str, status: str = "ok", h: str = "h1", **kw) -> dict:
    return {"key": key, "prompt_hash": h, "status": status, "text": f"text {key}", **kw}


def test_append_and_read_back_latest_wins(tmp_path):
    path = tmp_path / "txt.jsonl"
    with CacheWriter(path, fsync_every=2) as w:
        w.append(rec("a", "failed"))
        w.append(rec("b"))
        w.append(rec("a"))
        w.append(rec("a", h="h2"))
    c = read_cache(path)
    assert c.lines == 4 and not c.torn_tail and c.bad_lines == 0
    assert c.get("a", "h1")["status"] == "ok"
    assert c.get("a", "h2") is not None and c.get("c", "h1") is None


def test_torn_last_line_is_ignored_then_repaired_on_append(tmp_path):
    path = tmp_path / "txt.jsonl"
    with CacheWriter(path) as w:
        w.append(rec("a"))
    with open(path, "ab") as f:  # what kill -9 in the middle of a write would leave
        f.write(b'{"key": "b", "prompt_ha')
    c = read_cache(path)
    assert c.torn_tail and c.lines == 1 and list(c.records) == [("a", "h1")]
    with CacheWriter(path) as w:
        assert w.repaired_bytes == len(b'{"key": "b", "prompt_ha')
        w.append(rec("c"))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "c"]
    assert not read_cache(path).torn_tail


def test_torn_file_without_any_newline_is_truncated_to_empty(tmp_path):
    path = tmp_path / "txt.jsonl"
    path.write_bytes(b'{"key": "x"')
    with CacheWriter(path) as w:
        w.append(rec("a"))
    assert read_cache(path).lines == 1


def test_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "txt.jsonl"
    with CacheWriter(path), pytest.raises(DmesrError, match="another process"):
        CacheWriter(path).__enter__()
    with CacheWriter(path) as w:  # released on exit
        w.append(rec("a"))


def test_each_record_is_one_write_call(tmp_path, monkeypatch):
    calls = []
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: calls.append(b) or real(fd, b))
    with CacheWriter(tmp_path / "x.jsonl") as w:
        w.append(rec("a", text="ü" * 5000))
    assert len(calls) == 1 and calls[0].endswith(b"\n")

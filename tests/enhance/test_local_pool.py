"""The local backend's pool of llama.cpp models (no model loaded: `_load` is faked)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dmesr.enhance.backends.local import LocalBackend
from dmesr.enhance.config import LocalConfig


@pytest.mark.parametrize("workers", [1, 3])
def test_at_most_workers_models_each_serving_one_item(workers: int, monkeypatch) -> None:
    backend = LocalBackend(LocalConfig(workers=workers), "test")
    assert backend.concurrency == workers
    loads, busy, peak = [], set(), [0]
    lock = threading.Lock()
    monkeypatch.setattr(backend, "_load", lambda: loads.append(object()) or loads[-1])

    def use(_: int) -> None:
        with backend._llm() as llm:
            with lock:
                assert id(llm) not in busy  # never lent twice at once
                busy.add(id(llm))
                peak[0] = max(peak[0], len(busy))
            time.sleep(0.02)
            with lock:
                busy.discard(id(llm))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(use, range(40)))
    assert len(loads) == workers and peak[0] == workers


def test_models_load_one_at_a_time(monkeypatch) -> None:
    # a load swaps the process's stdout/stderr (llama-cpp-python); overlapping loads could
    # leave them pointing at /dev/null
    backend = LocalBackend(LocalConfig(workers=3), "test")
    inside, peak = [0], [0]
    lock = threading.Lock()

    def slow_load() -> object:
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        return object()

    monkeypatch.setattr(backend, "_load", slow_load)

    def use(_: int) -> None:
        with backend._llm():
            time.sleep(0.05)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(use, range(3)))
    assert backend._loaded == 3 and peak[0] == 1


def test_a_failed_load_frees_its_slot(monkeypatch) -> None:
    backend = LocalBackend(LocalConfig(workers=1), "test")

    def broken() -> object:
        raise RuntimeError("no model")

    monkeypatch.setattr(backend, "_load", broken)
    with pytest.raises(RuntimeError), backend._llm():
        pass
    monkeypatch.setattr(backend, "_load", object)
    with backend._llm() as llm:  # the slot was given back: a new load, no deadlock
        assert llm is not None


def test_default_workers_follow_the_cores(monkeypatch) -> None:
    monkeypatch.setattr("dmesr.enhance.config.available_cores", lambda: 16)
    assert LocalConfig().n_workers() == 4 and LocalConfig(n_threads=8).n_workers() == 2
    monkeypatch.setattr("dmesr.enhance.config.available_cores", lambda: 1)
    assert LocalConfig().n_workers() == 1


def test_a_batched_context_that_cannot_be_made_stops_the_run(monkeypatch) -> None:
    from dmesr.errors import DmesrError

    def no_context(*_: object) -> None:
        raise RuntimeError("llama.cpp could not create a batched context")

    monkeypatch.setattr("dmesr.enhance.backends.local.BatchDecoder", no_context)
    backend = LocalBackend(LocalConfig(workers=1, batch=4), "test")
    with pytest.raises(DmesrError, match=r"lower enhance\.local\.batch"):
        backend._decoder(object())


def test_a_prompt_too_long_for_the_batch_fails_alone(monkeypatch) -> None:
    from contextlib import contextmanager

    from dmesr.enhance.backends.batched import Completion

    class FakeDecoder:
        def tokenize(self, prompt: str) -> list[int]:
            return [0] * len(prompt)

        def fits(self, tokens: list[int], max_tokens: int) -> bool:
            return len(tokens) < 100

        def complete(self, prompts: list[list[int]], *_: object) -> list[Completion]:
            return [Completion(f"A summary of a {len(p)} token prompt.", 8, "stop")
                    for p in prompts]

    backend = LocalBackend(LocalConfig(workers=1, batch=3, degenerate_retries=0), "test")
    monkeypatch.setattr(backend, "_llm", contextmanager(lambda: iter([object()])))
    monkeypatch.setattr(backend, "_decoder", lambda _: FakeDecoder())

    def too_long(prompt: str) -> None:
        raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window")

    monkeypatch.setattr(backend, "_complete", too_long)
    results = backend._complete_batch(["short one", "x" * 200, "short two"])
    assert [r.ok for r in results] == [True, False, True]
    assert results[0].text == "A summary of a 9 token prompt."
    assert "exceed context window" in (results[1].error or "")


def test_llama_cpp_warnings_go_to_logging_and_errors_to_stderr(capsys, caplog) -> None:
    """llama.cpp's WARN (3) printed as an error through llama-cpp-python and broke the
    progress bar; continuation lines (5) follow the level of the line they continue."""
    from dmesr.enhance.backends.local import llama_log

    with caplog.at_level("WARNING", logger="dmesr.llama_cpp"):
        llama_log(3, "llama_kv_cache_iswa: using full-size SWA cache\n")
        llama_log(5, "  (continued)\n")
        llama_log(2, "llama_kv_cache: size = 15 MiB\n")
        llama_log(4, "llama_decode: failed\n")
        llama_log(5, " with code 1\n")
    assert capsys.readouterr().err == "llama_decode: failed\n with code 1\n"
    assert [r.getMessage() for r in caplog.records] == [
        "llama_kv_cache_iswa: using full-size SWA cache", "(continued)"]

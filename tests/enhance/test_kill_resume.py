"""kill -9 in the middle of a run: no corruption, finished work kept, rerun does the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from dmesr.enhance.cache import cache_path, read_cache
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.runner import DESCRIPTIONS, run_enhance
from dmesr.enhance.testing import make_prepared, sigterm_enhance_cli

CHILD = """
import sys
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.runner import run_enhance
cfg = EnhanceConfig.model_validate_json(sys.argv[2])
run_enhance(sys.argv[1], cfg, views=["txt"], progress=False, log=lambda m: None)
"""


def test_kill_9_mid_run_keeps_completed_work(tmp_path, servers):
    n = 150
    ds = make_prepared(tmp_path / "data", n_items=n, with_image=[False] * n)
    s = servers(delay_s=0.01, hold_after=40)  # the child cannot finish before it is stopped
    cfg = EnhanceConfig.model_validate({
        "backend": "openai", "cache_dir": str(tmp_path / "cache"), "fsync_every": 5,
        "openai": {"base_urls": [s.base_url], "concurrency": 4}})
    path = cache_path(cfg.cache_root(ds.root), "txt")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ds.root), cfg.model_dump_json()],
                             env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= 30:
                break
            assert child.poll() is None, "the child ended before it could be killed"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        s.release()

    killed = read_cache(path)
    assert killed.bad_lines == 0  # every complete line parses
    done = {k for k, r in killed.records.items() if r["status"] == "ok"}
    assert 30 <= len(done) < n  # work kept, and really killed mid-run

    sent_before = len(s.requests)
    summary = run_enhance(ds.root, cfg, views=["txt"], progress=False, log=lambda m: None)
    assert summary.sent["txt"] == n - len(done)  # only the missing ones
    assert len(s.requests) - sent_before == n - len(done)
    final = read_cache(path)
    assert final.bad_lines == 0 and not final.torn_tail
    assert sum(r["status"] == "ok" for r in final.records.values()) == n
    desc = pd.read_parquet(cfg.cache_root(ds.root) / DESCRIPTIONS)
    assert len(desc) == n and desc["item"].is_unique


def test_sigterm_via_the_cli_reports_and_keeps_work(tmp_path, servers):
    """`kill` (SIGTERM) on `dmesr enhance`: exit 143 with a message saying how to go on,
    every finished answer kept, and the rerun sends only the rest."""
    n = 150
    ds = make_prepared(tmp_path / "data", n_items=n, with_image=[False] * n)
    s = servers(delay_s=0.01, hold_after=40)  # the child cannot finish before it is stopped
    section = {"backend": "openai", "cache_dir": str(tmp_path / "cache"), "fsync_every": 5,
               "openai": {"base_urls": [s.base_url], "concurrency": 4}}
    config = tmp_path / "enhance.yaml"
    config.write_text(json.dumps({"enhance": section}))  # JSON is YAML
    path = cache_path(EnhanceConfig.model_validate(section).cache_root(ds.root), "txt")
    try:
        code, err = sigterm_enhance_cli(ds.root, config, path, after_lines=30, timeout_s=60,
                                        extra_args=("--views", "txt"))
    finally:
        s.release()
    assert code == 128 + signal.SIGTERM, err[-3000:]  # None: hung (stacks in err)
    assert "interrupted" in err and "rerun the same command" in err
    kept = read_cache(path)
    assert kept.bad_lines == 0
    done = sum(r["status"] == "ok" for r in kept.records.values())
    assert 30 <= done < n
    sent_before = len(s.requests)
    cfg = EnhanceConfig.model_validate(section)
    summary = run_enhance(ds.root, cfg, views=["txt"], progress=False, log=lambda m: None)
    assert summary.sent["txt"] == len(s.requests) - sent_before == n - done


class _Stopped(Exception):
    pass


def test_sigterm_cancels_the_event_loop_at_an_await_and_reaches_the_old_handler():
    """SIGTERM during `run_stoppable` cancels the main task (its `finally` runs, the loop
    ends) and then reaches the handler installed before, which is put back afterwards."""
    from dmesr.enhance.runner import run_stoppable

    def handler(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    cleaned = []

    async def main() -> None:
        import asyncio

        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(True)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        t0 = time.monotonic()
        try:
            run_stoppable(main())
            raise AssertionError("SIGTERM did not stop the loop")
        except _Stopped as exc:
            assert exc.args == (signal.SIGTERM,)
        assert cleaned == [True] and time.monotonic() - t0 < 10
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_run_stoppable_returns_the_result_and_restores_the_handler():
    from dmesr.enhance.runner import run_stoppable

    async def main() -> int:
        return 7

    before = signal.getsignal(signal.SIGTERM)
    assert run_stoppable(main()) == 7
    assert signal.getsignal(signal.SIGTERM) is before

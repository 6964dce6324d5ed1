"""Test helpers for Stage A: a tiny prepared dataset with images, and a recording server.

`RecordingServer` is a stdlib HTTP server in a thread that speaks just enough of the
OpenAI API (`/v1/chat/completions`, `/v1/completions`), records every request (path,
headers, JSON body) and can be scripted to answer 429 / 500 / an empty answer, so
retries, backoff, multi-URL spreading and the exact request JSON are tested without a
network or a model. Loopback only.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd

from dmesr.data.dataset import PreparedDataset


def make_prepared(
    root: str | Path,
    n_items: int = 6,
    with_image: list[bool] | None = None,
    domain: str = "movie",
    content_hash: str = "c0ffee" * 10 + "abcd",
) -> PreparedDataset:
    """A prepared-dataset folder with just what Stage A reads (manifest + items.parquet)."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with_image = with_image if with_image is not None else [i % 2 == 0 for i in range(n_items)]
    genres = ["Comedy", "Drama", "Horror", "Action"]
    rows = []
    for i in range(1, n_items + 1):
        path = None
        if with_image[i - 1]:
            path = root / "images" / f"{i}.jpg"
            Image.new("RGB", (64 + i, 96), (40 * i % 255, 90, 160)).save(path)
        rows.append({"item": i, "item_key": f"m{i}", "title": f"Film number {i}",
                     "genres": genres[i % 4] if i != 2 else None,
                     "image_path": str(path) if path else None,
                     "image_status": "ok" if path else "none"})
    pd.DataFrame(rows).to_parquet(root / "items.parquet", index=False)
    manifest = {"name": root.name, "domain": domain, "content_hash": content_hash,
                "text_fields": ["title", "genres"],
                "stats": {"users": 3, "items": n_items, "interactions": 0}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return PreparedDataset(root)


class _Server(ThreadingHTTPServer):
    # the default listen backlog (5) drops bursts of connects, which then wait a 1 s SYN
    # retransmit: that would be measured as client latency
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client killed or cancelled mid-request is what the kill tests do: not an error
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


Responder = Callable[[str, dict[str, Any]], tuple[int, dict[str, str], Any]]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    t: float


@dataclass
class RecordingServer:
    """OpenAI-compatible fake. `script` answers first (one entry per request), then `respond`.

    With `hold_after=n`, requests after the n-th wait until `release()`: a test that stops a
    client mid-run then cannot lose the race to a client that finished first."""

    respond: Responder | None = None
    delay_s: float = 0.0
    hold_after: int | None = None
    requests: list[Recorded] = field(default_factory=list)
    script: list[tuple[int, dict[str, str], Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _released: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> RecordingServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with owner._lock:
                    owner.requests.append(
                        Recorded(self.path, dict(self.headers), body, time.monotonic()))
                    scripted = owner.script.pop(0) if owner.script else None
                    held = owner.hold_after is not None and len(owner.requests) > owner.hold_after
                if held:
                    owner._released.wait(timeout=120)
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                status, headers, payload = scripted or (owner.respond or default_answer)(
                    self.path, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"content-type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def release(self) -> None:
        """Answer the held requests and stop holding new ones."""
        self.hold_after = None
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def default_answer(path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    """A plausible, distinct answer derived from the request."""
    if path.endswith("/completions") and "prompt" in body:
        seed = body["prompt"]
    else:
        content = body["messages"][-1]["content"]
        seed = content if isinstance(content, str) else content[-1]["text"]
    words = " ".join(seed.split()[-6:])
    text = f"A well made item that people who like {words} will enjoy a lot."
    if path.endswith("/chat/completions"):
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
    return 200, {}, {"id": "x", "object": "text_completion", "choices": [choice]}


def answer_with(text: str) -> Responder:
    def respond(path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        status, headers, payload = default_answer(path, body)
        choice = payload["choices"][0]
        if "message" in choice:
            choice["message"]["content"] = text
        else:
            choice["text"] = text
        return status, headers, payload

    return respond


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(
    model: str | Path | None = None, log: str | Path | None = None, timeout_s: float = 120,
    n_ctx: int = 1024, n_threads: int = 1,
) -> Iterator[str]:
    """Run `python -m llama_cpp.server` on a free loopback port; yields its /v1 base URL.

    `model` defaults to the packaged Gemma-3 270M GGUF. The server's verbose log goes to a
    file (a full pipe would block the server).
    """
    import httpx

    if model is None:
        from dmesr.enhance.backends.local import packaged_gguf

        model = packaged_gguf()
    port = free_port()
    log_path = Path(log) if log else Path(tempfile.mkstemp(suffix=".llama.log")[1])
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
             "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads",
             str(n_threads), "--n_threads_batch", str(n_threads), "--model_alias", "gemma"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}", log_path, timeout_s, httpx)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float, httpx: Any) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False, timeout=1) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"llama server exited: {log.read_text()[-2000:]}")
            try:
                if client.get(f"{url}/v1/models").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"llama server not ready after {timeout_s}s: {log.read_text()[-2000:]}")


def sigterm_enhance_cli(data: Path, config: Path, cache_file: Path, after_lines: int,
                        timeout_s: float, extra_args: tuple[str, ...] = ()
                        ) -> tuple[int | None, str]:
    """Run `dmesr enhance` in a child, SIGTERM it once `cache_file` holds `after_lines`
    answers, and return (exit code, stderr). The child must still be running then. A child
    still running `timeout_s` after the signal is dumped with SIGABRT (faulthandler prints
    every thread's stack to stderr) and gives (None, those stacks)."""
    import os
    import signal

    child = subprocess.Popen(
        [sys.executable, "-m", "dmesr.cli", "enhance", "--data", str(data), "--config",
         str(config), "--no-progress", *extra_args],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not (cache_file.exists() and cache_file.read_bytes().count(b"\n") >= after_lines):
            if child.poll() is not None:
                raise AssertionError("the child ended before it could be stopped: "
                                     f"{child.stderr.read()[-2000:] if child.stderr else ''}")
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {after_lines} answers within {timeout_s} s")
            time.sleep(0.02)
        child.send_signal(signal.SIGTERM)
        try:
            _, err = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            _, err = child.communicate(timeout=timeout_s)
            return None, err
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, err

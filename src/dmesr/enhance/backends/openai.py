"""Any OpenAI-compatible endpoint: vLLM, Ollama, llama.cpp server, hosted APIs.

- chat mode: POST {base}/chat/completions, the image (if any) as a base64 JPEG data URL
  in an `image_url` content part before the text part;
- completion mode: POST {base}/completions with the plain prompt (base models, which
  answer a chat template with nothing).

Requests run concurrently under one semaphore, spread over several base URLs (the least
busy first, ties round-robin), and are retried with exponential backoff plus jitter on
429, 5xx, timeouts and connection errors, honouring Retry-After. The API key is read from
the environment variable named in the config and is never logged or stored.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import itertools
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx

from dmesr.enhance.backends.base import Backend, Request, Result, judge
from dmesr.enhance.config import OpenAIConfig
from dmesr.errors import ConfigError

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIBackend(Backend):
    def __init__(self, cfg: OpenAIConfig, tag: str, client: httpx.AsyncClient | None = None):
        self.cfg = cfg
        self.tag = tag
        self.mode = cfg.mode
        self.concurrency = cfg.concurrency
        self._headers: dict[str, str] | None = None  # read at the first request, so a
        # coverage report works without the key
        self._client = client
        self._sem: asyncio.Semaphore | None = None
        self._inflight = dict.fromkeys(cfg.base_urls, 0)
        self._rr = itertools.count()
        #: requests sent (attempts) per base URL and retries done: for tests and reports
        self.sent: dict[str, int] = dict.fromkeys(cfg.base_urls, 0)
        self.retries = 0

    def supports(self, view: str) -> str | None:
        if view in ("img", "mm") and self.mode == "completion":
            return "completion mode sends no images; use mode=chat with a vision model"
        return None

    def describe(self) -> dict[str, Any]:
        # base URLs may carry credentials in userinfo; record host and path only
        urls = [httpx.URL(u).copy_with(username=None, password=None) for u in self.cfg.base_urls]
        return {"tag": self.tag, "mode": self.mode, "model": self.cfg.model,
                "base_urls": [str(u) for u in urls], "max_tokens": self.cfg.max_tokens,
                "temperature": self.cfg.temperature}

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(self.cfg.timeout_s, connect=self.cfg.connect_timeout_s)
            limits = httpx.Limits(max_connections=self.cfg.concurrency,
                                  max_keepalive_connections=self.cfg.concurrency)
            self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
        return self._client

    async def aclose(self) -> None:
        self._sem = None  # belongs to the loop that is ending
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def generate(self, request: Request) -> Result:
        if self._sem is None:  # created lazily: it must belong to the running event loop
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
        if self._headers is None:
            self._headers = _auth_headers(self.cfg.api_key_env)
        body = await self._body(request)
        async with self._sem:
            return await self._send_with_retries(body, request.prompt.text)

    async def _body(self, request: Request) -> dict[str, Any]:
        p = request.prompt
        body: dict[str, Any] = {"model": self.cfg.model, "max_tokens": self.cfg.max_tokens,
                                "temperature": self.cfg.temperature}
        if self.cfg.stop:
            body["stop"] = self.cfg.stop
        if self.mode == "completion":
            body["prompt"] = p.text
        else:
            body["messages"] = await self._messages(p.system, p.text, p.image_path)
        body.update(self.cfg.extra_body)
        return body

    async def _messages(self, system: str | None, text: str, image: str | None) -> list[Any]:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        if image is None:
            messages.append({"role": "user", "content": text})
            return messages
        url = await asyncio.to_thread(image_data_url, image, self.cfg.image_max_side)
        messages.append({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ]})
        return messages

    def _pick(self, avoid: str | None) -> str:
        """Least busy base URL, ties in round-robin order; avoid the one that just failed."""
        urls = self.cfg.base_urls
        start = next(self._rr) % len(urls)
        order = urls[start:] + urls[:start]
        if avoid is not None and len(urls) > 1:
            order = [u for u in order if u != avoid]
        return min(order, key=lambda u: self._inflight[u])

    async def _send_with_retries(self, body: dict[str, Any], prompt: str) -> Result:
        path = "/completions" if self.mode == "completion" else "/chat/completions"
        t0 = time.perf_counter()
        last_url: str | None = None
        error = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            url = self._pick(last_url if attempt else None)
            last_url = url
            outcome, delay = await self._attempt(url + path, url, body, attempt)
            if isinstance(outcome, dict):
                return self._parse(outcome, prompt, attempt + 1, time.perf_counter() - t0, url)
            error = outcome
            if delay is None or attempt == self.cfg.max_retries:
                break
            self.retries += 1
            await asyncio.sleep(delay)
        return Result(False, error=error, attempts=attempt + 1,
                      latency_s=time.perf_counter() - t0, endpoint=last_url)

    async def _attempt(
        self, full_url: str, base: str, body: dict[str, Any], n: int
    ) -> tuple[dict[str, Any] | str, float | None]:
        """(response JSON, None) or (error text, retry delay or None when not retryable)."""
        self._inflight[base] += 1
        self.sent[base] += 1
        try:
            resp = await self.client.post(full_url, json=body, headers=self._headers)
        except httpx.TimeoutException as exc:
            return f"timeout ({type(exc).__name__}) at {base}", self._backoff_delay(n)
        except httpx.TransportError as exc:
            return f"connection error ({type(exc).__name__}: {exc}) at {base}", self._backoff_delay(n)
        finally:
            self._inflight[base] -= 1
        if resp.status_code == 200:
            try:
                return resp.json(), None
            except ValueError:
                return f"HTTP 200 with a non-JSON body at {base}", self._backoff_delay(n)
        error = f"HTTP {resp.status_code} at {base}: {resp.text[:200]}"
        if resp.status_code not in RETRY_STATUS:
            return error, None
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        if retry_after is not None:
            return error, min(retry_after, self.cfg.backoff_max_s)
        return error, self._backoff_delay(n)

    def _backoff_delay(self, n: int) -> float:
        """Delay before retry n+1: exponential with 'equal jitter' (half fixed, half random).

        The jitter spreads clients that failed together; the fixed half keeps a floor so a
        struggling server really gets the pause.
        """
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**n)
        return cap / 2 + random.uniform(0, cap / 2)

    def _parse(
        self, data: dict[str, Any], prompt: str, attempts: int, latency: float, url: str
    ) -> Result:
        kw = {"attempts": attempts, "latency_s": latency, "endpoint": url}
        try:
            choice = data["choices"][0]
            if self.mode == "completion":
                answer = choice.get("text")
            else:
                answer = _content_text(choice["message"].get("content"))
        except (KeyError, IndexError, TypeError, AttributeError):
            return Result(False, error=f"malformed response: {str(data)[:200]}", **kw)
        return judge(answer, prompt, truncated=choice.get("finish_reason") == "length",
                     deterministic=self.cfg.temperature == 0, **kw)


def _content_text(content: Any) -> str | None:
    """Chat content may be a string or a list of parts; keep the text parts."""
    if content is None or isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def _auth_headers(env_name: str | None) -> dict[str, str]:
    if env_name is None:
        return {}
    key = os.environ.get(env_name)
    if not key:
        raise ConfigError(
            f"enhance.openai.api_key_env names ${env_name}, which is not set or empty"
        )
    return {"Authorization": f"Bearer {key}"}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def image_data_url(path: str | Path, max_side: int = 768) -> str:
    """`data:image/jpeg;base64,…` of an image, downscaled so its longest side <= max_side."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

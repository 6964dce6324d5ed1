"""The openai backend against local recording servers: exact JSON, retries, spreading."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import pytest
from PIL import Image

from dmesr.enhance.backends.base import Request
from dmesr.enhance.backends.openai import OpenAIBackend, parse_retry_after
from dmesr.enhance.config import OpenAIConfig
from dmesr.enhance.prompts import TemplateSet
from dmesr.enhance.testing import answer_with
from dmesr.errors import ConfigError

T = TemplateSet.load("default")


def backend(urls, **kw) -> OpenAIBackend:
    cfg = OpenAIConfig(base_urls=urls, model="test-vlm", backoff_base_s=0.05, backoff_max_s=1.0,
                       timeout_s=5, **kw)
    return OpenAIBackend(cfg, "openai-test")


def req(i: int, view: str = "txt", mode: str = "chat", image=None) -> Request:
    p = T.render(view, mode, "movie", {"title": f"Film {i}"}, image, "sha" if image else None)
    return Request(i, f"m{i}", p)


def run(b: OpenAIBackend, requests):
    async def go():
        try:
            return await asyncio.gather(*(b.generate(r) for r in requests))
        finally:
            await b.aclose()
    return asyncio.run(go())


def test_chat_request_json_with_image_part(servers, tmp_path):
    img = tmp_path / "poster.png"
    Image.new("RGB", (1200, 600), (200, 10, 10)).save(img)
    s = servers()
    b = backend([s.base_url], max_tokens=77, temperature=0.0, stop=["\n\n"],
                image_max_side=300, extra_body={"top_p": 0.9})
    [res] = run(b, [req(1, "img", image=str(img))])
    assert res.ok and res.endpoint == s.base_url
    [r] = s.requests
    assert r.path == "/v1/chat/completions"
    body = r.body
    url = body["messages"][1]["content"][0]["image_url"]["url"]
    assert body == {
        "model": "test-vlm", "max_tokens": 77, "temperature": 0.0, "stop": ["\n\n"], "top_p": 0.9,
        "messages": [
            {"role": "system", "content": T.system},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": T.render("img", "chat", "movie", {}).text},
            ]},
        ],
    }
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "JPEG" and max(decoded.size) == 300


def test_text_only_chat_and_completion_mode(servers):
    s = servers()
    [res] = run(backend([s.base_url]), [req(1)])
    assert res.ok and isinstance(s.requests[0].body["messages"][1]["content"], str)
    [res] = run(backend([s.base_url], mode="completion"), [req(2, mode="completion")])
    r = s.requests[1]
    assert res.ok and r.path == "/v1/completions"
    assert r.body["prompt"].startswith("Catalogue entry of a movie.") and "messages" not in r.body


def test_completion_mode_cannot_do_image_views():
    b = backend(["http://127.0.0.1:9/v1"], mode="completion")
    assert b.supports("img") and b.supports("mm") and b.supports("txt") is None


def test_api_key_from_env_only(servers, monkeypatch):
    s = servers()
    monkeypatch.setenv("DMESR_TEST_KEY", "sk-secret-123")
    b = backend([s.base_url], api_key_env="DMESR_TEST_KEY")
    run(b, [req(1)])
    assert s.requests[0].headers["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in str(b.describe())
    monkeypatch.delenv("DMESR_TEST_KEY")
    with pytest.raises(ConfigError, match="DMESR_TEST_KEY"):
        run(backend([s.base_url], api_key_env="DMESR_TEST_KEY"), [req(2)])
    assert len(s.requests) == 1


def test_retries_429_honouring_retry_after_then_succeeds(servers):
    s = servers(script=[(429, {"Retry-After": "0.3"}, {"error": "slow down"}),
                        (500, {}, {"error": "boom"})])
    b = backend([s.base_url])
    [res] = run(b, [req(1)])
    assert res.ok and res.attempts == 3 and b.retries == 2
    t = [r.t for r in s.requests]
    assert t[1] - t[0] >= 0.29  # Retry-After honoured
    assert 0.02 <= t[2] - t[1] < 0.5  # then exponential backoff from backoff_base_s


def test_retry_after_is_capped_and_parsed():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_client_errors_are_not_retried(servers):
    s = servers(script=[(400, {}, {"error": "bad request"})])
    b = backend([s.base_url])
    [res] = run(b, [req(1)])
    assert not res.ok and res.attempts == 1 and "HTTP 400" in res.error and len(s.requests) == 1


def test_connection_errors_are_retried_then_recorded():
    b = backend(["http://127.0.0.1:9/v1"], max_retries=2)  # nothing listens on port 9
    t0 = time.monotonic()
    [res] = run(b, [req(1)])
    assert not res.ok and res.attempts == 3 and "connection error" in res.error
    assert time.monotonic() - t0 >= 0.05  # backed off between attempts


def test_load_is_spread_over_base_urls(servers):
    a, c = servers(delay_s=0.05), servers(delay_s=0.05)
    b = backend([a.base_url, c.base_url], concurrency=4)
    results = run(b, [req(i) for i in range(24)])
    assert all(r.ok for r in results)
    assert len(a.requests) == 12 and len(c.requests) == 12


def test_a_failing_url_is_avoided_on_retry(servers):
    bad = servers(respond=lambda path, body: (503, {}, {"error": "down"}))
    good = servers()
    b = backend([bad.base_url, good.base_url], concurrency=2)
    results = run(b, [req(i) for i in range(10)])
    assert all(r.ok for r in results) and all(r.endpoint == good.base_url for r in results)
    assert len(good.requests) == 10 and b.retries == len(bad.requests)


def test_concurrency_is_bounded(servers):
    s = servers(delay_s=0.1)
    b = backend([s.base_url], concurrency=3)
    t0 = time.monotonic()
    run(b, [req(i) for i in range(9)])
    assert time.monotonic() - t0 >= 0.29  # 9 requests, 3 at a time, 0.1 s each


@pytest.mark.parametrize("answer", ["", "   ", "the the the the the the the"])
def test_degenerate_answers_are_failures(servers, answer):
    s = servers(respond=answer_with(answer))
    [res] = run(backend([s.base_url], temperature=0.0), [req(1)])
    assert not res.ok and res.text is None and res.error.startswith("degenerate") and res.final

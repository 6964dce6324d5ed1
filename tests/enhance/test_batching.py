"""The runner hands a batching backend consecutive requests; a failed batch fails only its
own items."""

from __future__ import annotations

import asyncio

from dmesr.enhance.backends.base import Backend, Request, Result
from dmesr.enhance.prompts import Prompt
from dmesr.enhance.runner import _drive


class _Batching(Backend):
    def __init__(self, batch_size: int, concurrency: int, broken: int | None = None) -> None:
        self.batch_size, self.concurrency, self.broken = batch_size, concurrency, broken
        self.batches: list[list[int]] = []

    async def generate(self, request: Request) -> Result:  # pragma: no cover - unused
        raise AssertionError("the runner must call generate_batch")

    async def generate_batch(self, requests: list[Request]) -> list[Result]:
        items = [r.item for r in requests]
        self.batches.append(items)
        await asyncio.sleep(0.01)
        if self.broken in items:
            raise RuntimeError("model crashed")
        return [Result(True, text=f"answer {i}") for i in items]


def _requests(n: int) -> list[Request]:
    prompt = Prompt("txt", "t@1", None, "p", None, None, "p", "h")
    return [Request(i, str(i), prompt) for i in range(n)]


def _run(backend: _Batching, n: int) -> dict[int, Result]:
    got: dict[int, Result] = {}
    asyncio.run(_drive(backend, _requests(n), lambda req, res: got.__setitem__(req.item, res)))
    return got


def test_batches_are_consecutive_requests_in_order() -> None:
    backend = _Batching(batch_size=3, concurrency=2)
    got = _run(backend, 7)
    assert sorted(backend.batches) == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(got[i].ok and got[i].text == f"answer {i}" for i in range(7))


def test_a_failed_batch_fails_its_items_only() -> None:
    backend = _Batching(batch_size=2, concurrency=1, broken=3)
    got = _run(backend, 5)
    failed = sorted(i for i, r in got.items() if not r.ok)
    assert failed == [2, 3] and "model crashed" in (got[2].error or "")
    assert len(got) == 5


def test_unbatched_backends_get_one_request_at_a_time() -> None:
    backend = _Batching(batch_size=1, concurrency=3)
    _run(backend, 4)
    assert sorted(backend.batches) == [[0], [1], [2], [3]]

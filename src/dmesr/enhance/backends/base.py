"""The one interface every generation backend implements.

A backend turns a rendered `Prompt` into a `Result`. It never writes the cache and never
decides what to run: the runner does both, so every backend gets resumability, the
degenerate-answer check and progress reporting for free.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from typing import Any

from dmesr.enhance.prompts import Prompt, TemplateSet
from dmesr.enhance.quality import clean, degenerate_reason


@dataclass
class Request:
    item: int
    item_key: str
    prompt: Prompt
    # finished texts of other views of the same item, for derived views (local `mm`)
    context: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    ok: bool
    text: str | None = None
    error: str | None = None
    attempts: int = 1
    latency_s: float = 0.0
    endpoint: str | None = None
    raw: str | None = None  # the rejected answer (shortened), kept for error reports
    # a failure that would repeat if retried (a degenerate answer of deterministic decoding)
    final: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def internal_error(exc: Exception) -> Result:
    """An unexpected exception while serving one item: a failure of that item (retried on
    rerun), never the end of a long run."""
    return Result(False, error=f"internal error: {type(exc).__name__}: {exc}")


def judge(
    answer: str | None,
    prompt: str,
    truncated: bool = False,
    deterministic: bool = False,
    **kw: Any,
) -> Result:
    """Clean an answer and turn a degenerate one into a failure (never a description).

    `deterministic`: the decoding would give the same answer again (greedy or seeded), so
    the failure is final and a rerun does not retry it.
    """
    text = clean(answer, truncated)
    reason = degenerate_reason(text, prompt)
    if reason:
        return Result(False, error=f"degenerate: {reason}", raw=(answer or "")[:300],
                      final=deterministic, **kw)
    return Result(True, text=text, **kw)


class Backend(abc.ABC):
    """Generates descriptions for rendered prompts."""

    #: filesystem-safe model name; one cache folder per tag
    tag: str = "backend"
    #: requests the runner keeps in flight
    concurrency: int = 1
    #: requests the runner hands over together (see `generate_batch`)
    batch_size: int = 1
    #: request mode used to render templates
    mode: str = "chat"

    def supports(self, view: str) -> str | None:
        """None if the backend can produce `view`, else the reason it cannot."""
        return None

    def depends_on(self, view: str) -> tuple[str, ...]:
        """Views whose finished texts this view needs in `Request.context`."""
        return ()

    def make_prompt(
        self,
        templates: TemplateSet,
        view: str,
        domain: str,
        fields: dict[str, Any],
        image_path: str | None,
        image_sha: str | None,
        dep_hashes: dict[str, str],
        max_field_chars: int = 1200,
    ) -> Prompt:
        """Render the prompt of one (item, view); derived views override this."""
        return templates.render(view, self.mode, domain, fields, image_path, image_sha,
                                max_field_chars=max_field_chars)

    def describe(self) -> dict[str, Any]:
        """What to record about the backend in artefacts (never secrets)."""
        return {"tag": self.tag, "mode": self.mode}

    @abc.abstractmethod
    async def generate(self, request: Request) -> Result: ...

    async def generate_batch(self, requests: list[Request]) -> list[Result]:
        """Results for up to `batch_size` requests of one view, in order. Backends that
        decode several prompts at once override it."""
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections / models."""

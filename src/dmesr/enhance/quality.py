"""Clean generated answers and reject degenerate ones before they reach the cache as text.

Small and base models fail in recognisable ways: they return nothing (a base model behind
a chat template often stops at once), echo the prompt, loop on one token or one phrase,
or emit punctuation soup. Such answers would be embedded as if they were descriptions and
quietly poison the MLLM views, so they are recorded as failures with a reason instead.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def clean(text: str | None, truncated: bool = False) -> str:
    """Strip whitespace; a cut-off answer loses its unfinished last sentence when one is complete."""
    out = " ".join((text or "").split())
    if truncated:
        ends = [m.end() for m in _SENTENCE_END.finditer(out)]
        # an unfinished clause adds noise to the embedding; cut it when a complete
        # sentence of some substance remains
        if ends and ends[-1] >= 20:
            out = out[: ends[-1]]
    return out


def degenerate_reason(answer: str, prompt: str = "", min_words: int = 3) -> str | None:
    """Why `answer` is not a usable description, or None when it is."""
    text = answer.strip()
    if not text:
        return "empty answer"
    words = [w.lower() for w in _WORD.findall(text)]
    if not words or sum(len(w) for w in words) < 0.4 * len(text.replace(" ", "")):
        return "no text (mostly symbols)"
    if len(words) < min_words:
        return f"too short ({len(words)} words)"
    if _echoes(words, prompt):
        return "repeats the prompt"
    return _repetition(words)


def _echoes(words: list[str], prompt: str) -> bool:
    """True when most of the answer is a verbatim run of the prompt."""
    if not prompt:
        return False
    prompt_norm = " " + " ".join(w.lower() for w in _WORD.findall(prompt)) + " "
    answer_norm = " " + " ".join(words) + " "
    if answer_norm in prompt_norm:
        return True
    # longest prefix of the answer found in the prompt, in words
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if " " + " ".join(words[:mid]) + " " in prompt_norm:
            lo = mid
        else:
            hi = mid - 1
    return lo >= max(8, int(0.8 * len(words)))


def _repetition(words: list[str]) -> str | None:
    counts = Counter(words)
    top, n_top = counts.most_common(1)[0]
    if len(words) >= 6 and n_top / len(words) > 0.5:
        return f"one token repeated ('{top}' x{n_top})"
    if len(words) >= 12 and len(counts) / len(words) < 0.25:
        return "too repetitive (few distinct words)"
    for n in (2, 3, 4, 5, 6):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if not grams:
            break
        gram, k = grams.most_common(1)[0]
        if k >= 4 and k * n >= 0.5 * len(words):
            return f"phrase loop ('{' '.join(gram)}' x{k})"
    return None

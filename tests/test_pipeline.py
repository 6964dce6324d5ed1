"""The whole job end to end on a tiny dataset: prepare, enhance, embed, train, evaluate.

The MLLM is a local recording server speaking the OpenAI API (no model, no network); the
text encoder is the packaged MiniLM. A second run must do no work.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from support import REPO, write_atomic_files

pytest.importorskip("sentence_transformers")


def _write_configs(tmp: Path, server_url: str) -> Path:
    inter, item = write_atomic_files(tmp / "raw", n_users=30, n_items=25)
    (tmp / "dataset.yaml").write_text(
        "name: tiny\nformat: recbole_atomic\ndomain: movie\n"
        f"paths: {{inter: {inter}, item: {item}}}\n"
        "filter: {user_min: 5, item_min: 2}\nsplit: {n_negatives: 10, seed: 1}\n")
    (tmp / "stage_a.yaml").write_text(
        "enhance:\n  backend: openai\n  views: [img, txt, mm]\n  openai:\n"
        f"    base_urls: ['{server_url}']\n    model: fake\n    mode: completion\n"
        "    concurrency: 4\n    max_tokens: 16\n    max_retries: 1\n"
        "embed:\n  batch_size: 32\n  threads: 1\n")
    configs = REPO / "configs" / "experiments"
    (tmp / "grid.yaml").write_text(
        f"include: {configs / 'variants.yaml'}\nname: tiny_pipeline\ndataset: tiny\n"
        f"base: [{configs / 'base_ml100k.yaml'}]\nbackbones: {{sasrec: [model.backbone=sasrec]}}\n"
        "overrides: [model.hidden=16, model.inner=32, model.max_len=10, train.epochs=2,\n"
        "            train.batch_size=8, train.tensorboard=false, train.progress=false]\n"
        "variants: [id, dmesr]\nablations: []\nseeds: [1]\nworkers: 1\ncompare_to: [id]\n"
        f"out: {tmp / 'runs'}\nresults_dir: {tmp / 'results'}\n")
    (tmp / "pipeline.yaml").write_text(
        "name: tiny\npaths: {dataset: dataset.yaml, prepared: prepared, stage_a: stage_a.yaml,"
        " experiment: grid.yaml}\n")
    return tmp / "pipeline.yaml"


def test_pipeline_end_to_end_and_cached_rerun(tmp_path: Path, capsys: pytest.CaptureFixture):
    from dmesr.enhance.testing import RecordingServer
    from dmesr.pipeline import run_pipeline

    server = RecordingServer().start()
    try:
        config = _write_configs(tmp_path, server.base_url)
        logs: list[str] = []
        results = run_pipeline(config, log=logs.append, progress=False)
        n_requests = len(server.requests)
        df = pd.read_csv(results / "results.csv")
        assert sorted(df["variant"]) == ["dmesr", "id"]
        assert df["test_full_NDCG@10"].between(0, 1).all()
        features = {p.stem for p in (tmp_path / "prepared" / "features").glob("*.json")}
        assert {"mllm_txt", "text_title", "text_genres"} <= features
        assert "mllm_img" not in features  # no images: img and mm are missing, not invented
        assert n_requests > 0
        hint = next(line for line in logs if line.startswith("top-K lists: dmesr recommend"))
        assert "/dmesr/seed" in hint  # the DMESR run, which `dmesr recommend` can load
        logs.clear()
        capsys.readouterr()
        run_pipeline(config, log=logs.append, progress=False)
        text = "\n".join(logs) + capsys.readouterr().out
        assert len(server.requests) == n_requests  # every answer came from the cache
        assert "up to date" in text and "nothing to do" in text
        assert "0 to run" in text
    finally:
        server.stop()

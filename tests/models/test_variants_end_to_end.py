"""Every variant of configs/experiments/variants.yaml on every backbone, a few real steps.

Features are a synthetic but real feature store (written with the store's own writer) on
the tiny prepared dataset: three MLLM views with images missing for some items, two text
fields. Each cell builds through the same config path as `dmesr train`, trains two steps,
and scores candidates and the full catalogue.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dmesr.config import load_config
from dmesr.data.dataset import PreparedDataset
from dmesr.models import build_model
from dmesr.models.dmesr import DMESREncoder
from dmesr.train.config import RunConfig
from support import REPO, write_fake_store

VARIANTS = yaml.safe_load((REPO / "configs/experiments/variants.yaml").read_text())["vocabulary"]
BACKBONES = ["sasrec", "bert4rec", "gru4rec"]
SMALL = ["model.hidden=16", "model.inner=32", "model.gru_hidden=16", "model.max_len=8",
         "model.heads=2", "model.encoder.dmesr.heads=2"]


@pytest.fixture(scope="module")
def store(tiny_dataset: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_store(tiny_dataset, tmp_path_factory.mktemp("features"))


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_trains_and_scores(variant: str, backbone: str, tiny_dataset, store: Path):
    overrides = [f"model.backbone={backbone}", *SMALL, *VARIANTS[variant],
                 f"model.encoder.features={store}"]
    cfg = load_config(RunConfig, [REPO / "configs/experiments/base_ml100k.yaml"], overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, tiny_dataset.n_items, dataset=tiny_dataset)
    seqs = torch.from_numpy(tiny_dataset.split("train").padded(cfg.model.max_len + 1))[:8]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        loss = model.calculate_loss(model.train_batch(seqs))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    batch = {"seq": seqs[:, 1:]}
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        cand = torch.randint(1, tiny_dataset.n_items + 1, (8, 5))
        sampled = model.predict(batch, cand)
    assert full.shape == (8, tiny_dataset.n_items + 1) and torch.isfinite(full[:, 1:]).all()
    assert torch.allclose(sampled, full.gather(1, cand), atol=1e-4)
    enc = model.encoder
    expected_views = 1 if variant == "id" else len(_out_views(variant))
    assert enc.n_views == expected_views
    if isinstance(enc, DMESREncoder):
        _check_switches(variant, enc)


def _out_views(variant: str) -> list[str]:
    for item in VARIANTS[variant]:
        if item.startswith("model.encoder.dmesr.out_views="):
            return yaml.safe_load(item.split("=", 1)[1])
    return ["text", "mllm", "id"]


def _check_switches(variant: str, enc: DMESREncoder) -> None:
    """An ablation really removes its component."""
    settings = " ".join(VARIANTS[variant])
    if "align_weight=0" in settings:
        enc.train()
        enc.new_step()
        enc(torch.tensor([[1, 2, 3]]))
        assert enc.aux_loss() is None
    if "fusion=mean" in settings or "fusion=concat" in settings:
        assert enc.cfg.fusion in ("mean", "concat")
    if "mllm_views=[txt, mm]" in settings:
        assert enc.mllm_names == ["mllm_txt", "mllm_mm"]
    if "mllm_views=[]" in settings:
        assert enc.mllm_names == []
    if "id" not in enc.cfg.out_views:
        assert enc.id_embedding is None

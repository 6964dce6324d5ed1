"""The local `img` view and image features on real TMDB posters (skipped without ../shared/data)."""

from __future__ import annotations

import pandas as pd
import pytest

from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.runner import DESCRIPTIONS, run_enhance

pytestmark = pytest.mark.realdata
pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def posters(shared_data, tmp_path_factory, request):
    from dmesr.data.commands import load_dataset_config
    from dmesr.data.prepare import prepare

    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setenv("DMESR_SHARED_DATA", str(shared_data))
    cfg = load_dataset_config(request.config.rootpath / "configs/datasets/ml100k_posters.yaml", [])
    return prepare(cfg, tmp_path_factory.mktemp("posters") / "prepared", log=lambda _: None,
                   progress=False)


def test_poster_labels_and_image_features(posters, tmp_path):
    cfg = EnhanceConfig.model_validate({"backend": "local", "cache_dir": str(tmp_path / "c")})
    summary = run_enhance(posters.root, cfg, views=["img"], limit=8, progress=False,
                          log=lambda m: None)
    assert summary.ok["img"] >= 7
    desc = pd.read_parquet(cfg.cache_root(posters.root) / DESCRIPTIONS).set_index("item")
    assert "comic book" in desc.loc[1, "text"]  # Toy Story's poster
    from dmesr.features.image import ImageEncoder

    paths = posters.items.sort_values("item")["image_path"].head(8).tolist()
    batch = ImageEncoder(threads=2).encode(paths)
    assert batch.features.shape == (8, 1280) and batch.ok.sum() >= 7
    assert (batch.features[batch.ok] >= 0).all()  # pooled after an activation

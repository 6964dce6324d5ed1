from __future__ import annotations

import json

import numpy as np
import pytest

from dmesr.enhance.testing import make_prepared
from dmesr.errors import ArtifactMismatchError
from dmesr.features.store import FeatureStore, item_order_hash, write_view


def store_with_view(ds, root, dim=4):
    n = ds.n_items
    feats = np.arange((n + 1) * dim, dtype=np.float32).reshape(n + 1, dim)
    mask = np.ones(n + 1, dtype=bool)
    mask[0] = mask[2] = False
    meta = {"kind": "text", "content_hash": ds.content_hash,
            "item_order_hash": item_order_hash(ds), "encoder": {"name": "x"}}
    write_view(root, "text_title", feats, mask, meta)
    return feats, mask


def test_roundtrip_is_id_aligned_with_padding_row(fake_data, tmp_path):
    feats, _ = store_with_view(fake_data, tmp_path / "f")
    store = FeatureStore(tmp_path / "f", fake_data)
    assert store.views == ["text_title"] and store.views_of("text") == ["text_title"]
    v = store.load("text_title", verify=True)
    assert v.features.shape == (7, 4) and v.features.dtype == np.float32
    assert not v.features[0].any() and not v.features[2].any()  # padding and masked rows
    np.testing.assert_array_equal(v.features[3], feats[3])
    f, m = v.batch(np.array([[0, 3], [2, 1]]))
    assert f.shape == (2, 2, 4) and m.tolist() == [[False, True], [False, True]]
    assert v.coverage == pytest.approx(5 / 6)
    assert store.summary()[0]["coverage"] == "5/6"


def test_loading_refuses_another_dataset(fake_data, tmp_path):
    store_with_view(fake_data, tmp_path / "f")
    other = make_prepared(tmp_path / "other", content_hash="deadbeef" * 8)
    with pytest.raises(ArtifactMismatchError, match="dataset hash"):
        FeatureStore(tmp_path / "f", other).load("text_title")


def test_loading_refuses_another_item_order_and_shape(fake_data, tmp_path):
    store_with_view(fake_data, tmp_path / "f")
    sidecar = tmp_path / "f" / "text_title.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "item_order_hash": "x"}))
    with pytest.raises(ArtifactMismatchError, match="item order"):
        FeatureStore(tmp_path / "f", fake_data).load("text_title")
    sidecar.write_text(json.dumps(meta))
    np.save(tmp_path / "f" / "text_title.npy", np.zeros((5, 4), np.float32))
    with pytest.raises(ArtifactMismatchError, match=r"expected \(7, 4\)"):
        FeatureStore(tmp_path / "f", fake_data).load("text_title")


def test_verify_detects_a_changed_file(fake_data, tmp_path):
    store_with_view(fake_data, tmp_path / "f")
    np.save(tmp_path / "f" / "text_title.npy", np.ones((7, 4), np.float32))
    FeatureStore(tmp_path / "f", fake_data).load("text_title")  # shapes fine
    with pytest.raises(ArtifactMismatchError, match="sha256"):
        FeatureStore(tmp_path / "f", fake_data).load("text_title", verify=True)

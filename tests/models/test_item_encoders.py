from __future__ import annotations

import numpy as np
import pytest
import torch

from dmesr.errors import ArtifactMismatchError
from dmesr.models.item_encoders import IdEncoder, MultiViewEncoder, PretrainedTableEncoder


def test_id_encoder_shapes_and_padding() -> None:
    enc = IdEncoder(10, 8)
    out = enc(torch.tensor([[0, 3, 10]]))
    assert out.shape == (1, 3, 1, 8)
    assert torch.all(out[0, 0] == 0)
    assert enc.all_items().shape == (11, 1, 8)
    assert enc.aux_loss() is None


def test_mask_token_is_separate_and_learnable() -> None:
    enc = IdEncoder(10, 8)
    enc.enable_mask_token()
    out = enc(torch.tensor([11, 2]))
    assert torch.equal(out[0], enc.mask_emb)
    assert torch.equal(out[1], enc.all_items()[2])
    assert enc.all_items().shape[0] == 11  # [MASK] is never a candidate
    out[0].sum().backward()
    assert enc.mask_emb.grad is not None


@pytest.mark.parametrize("trainable", [False, True])
def test_pretrained_table_frozen_or_trainable(tmp_path, trainable: bool) -> None:
    feats = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    enc = PretrainedTableEncoder(tmp_path / "f.npy", 10, 8, trainable=trainable)
    assert enc.table.weight.requires_grad is trainable
    assert torch.allclose(enc.table.weight[1:], torch.from_numpy(feats))
    out = enc(torch.tensor([0, 4]))
    assert out.shape == (2, 1, 8) and torch.all(out[0] == 0)
    assert torch.allclose(enc.all_items()[4], out[1])
    with pytest.raises(ArtifactMismatchError):
        PretrainedTableEncoder(feats[:7], 10, 8)


def test_multiview_concatenates_views() -> None:
    a, b = IdEncoder(10, 4), IdEncoder(10, 4)
    enc = MultiViewEncoder([a, b])
    ids = torch.tensor([[1, 2]])
    out = enc(ids)
    assert out.shape == (1, 2, 2, 4) and enc.n_views == 2
    assert torch.equal(out[..., 1, :], b(ids)[..., 0, :])

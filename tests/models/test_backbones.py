"""Backbones: no leakage from the future or from padding, masking, losses that learn."""

from __future__ import annotations

import pytest
import torch

from dmesr.models import build_model
from dmesr.models.dropout import attention, byte_mask, fast_dropout
from dmesr.models.item_encoders import IdEncoder, MultiViewEncoder
from dmesr.models.sequential import sample_negatives
from dmesr.train.config import ModelConfig

torch.set_num_threads(1)
N_ITEMS, L = 30, 8


def make(backbone: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, hidden=16, heads=2, inner=32, max_len=L, **kw)
    return build_model(cfg, N_ITEMS).eval()


def seqs() -> torch.Tensor:
    return torch.tensor([[0, 0, 3, 7, 1, 9, 4, 2], [5, 6, 7, 8, 9, 10, 11, 12]])


def test_attention_paths_agree_and_training_dropout_keeps_the_mask() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 4) for _ in range(3))
    allowed = torch.ones(6, 6, dtype=torch.bool).tril().expand(3, 1, 6, 6)
    fused = attention(q, k, v, allowed, 0.0, training=False)
    assert torch.allclose(attention(q, k, v, allowed, 0.0, True, fused=False), fused, atol=1e-6)
    # with dropout (training) a masked-out future key still contributes nothing
    v_future = v.clone()
    v_future[..., 3:, :] += 100.0
    torch.manual_seed(1)
    a = attention(q, k, v, allowed, 0.5, training=True)
    torch.manual_seed(1)  # the same dropout mask
    b = attention(q, k, v_future, allowed, 0.5, training=True)
    assert torch.equal(a[..., :3, :], b[..., :3, :])
    assert not torch.allclose(a[..., 3:, :], b[..., 3:, :])
    assert not torch.allclose(a, attention(q, k, v, allowed, 0.5, training=True))  # it drops


def test_attention_with_dropout_matches_the_textbook_order() -> None:
    """The reordered path (scales on q and the output, in-place mask) equals
    Drop(softmax(mask(q k^T / sqrt(dh)))) v with the same byte mask, values and gradients."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 4, requires_grad=True) for _ in range(3))
    allowed = torch.ones(6, 6, dtype=torch.bool).tril().expand(3, 1, 6, 6)
    torch.manual_seed(1)
    fast = attention(q, k, v, allowed, 0.3, training=True)
    grads_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
    torch.manual_seed(1)
    keep, p_q = byte_mask(torch.Size([3, 2, 6, 6]), 0.3, q.device)
    probs = ((q @ k.transpose(-2, -1)) / 2.0).masked_fill(~allowed, float("-inf")).softmax(-1)
    ref = (probs * keep / (1 - p_q)) @ v
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert torch.allclose(fast, ref, atol=1e-5)
    for g_fast, g_ref in zip(grads_fast, grads_ref, strict=True):
        assert torch.allclose(g_fast, g_ref, atol=1e-4)


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_future_item_never_changes_earlier_outputs(backbone: str) -> None:
    model = make(backbone)
    s = seqs()
    base = model.states(s)
    for j in range(3, L):
        changed = s.clone()
        changed[:, j] = (changed[:, j] % N_ITEMS) + 1
        out = model.states(changed)
        assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6), j
        assert not torch.allclose(out[:, j], base[:, j])  # the test can see a change


def test_bert4rec_is_bidirectional() -> None:
    model = make("bert4rec")
    s = seqs()
    changed = s.clone()
    changed[:, -1] = 20
    assert not torch.allclose(model.states(changed)[:, 3], model.states(s)[:, 3])


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
def test_padding_content_changes_nothing(backbone: str) -> None:
    model = make(backbone)
    s = seqs()
    valid = s > 0
    base = model.states(s)
    with torch.no_grad():  # a padding row that is not zero must still not leak
        model.encoder.embedding.weight[0] = torch.randn(16) * 3
    out = model.states(s)
    assert torch.allclose(out[valid], base[valid], atol=1e-5)
    assert torch.all(out[~valid] == 0)


def test_gru_output_independent_of_padding_amount() -> None:
    model = make("gru4rec")
    short = torch.tensor([[0, 0, 0, 0, 0, 4, 5, 6]])
    tail = model.states(short)[:, -3:]
    longer = torch.tensor([[0, 0, 4, 5, 6]])  # same history, 3 pads fewer
    assert torch.allclose(model.states(longer)[:, -3:], tail, atol=1e-6)


def test_bert4rec_masking() -> None:
    model = make("bert4rec", mask_prob=0.3, last_ratio=0.0).train()
    torch.manual_seed(1)
    s = torch.randint(1, N_ITEMS + 1, (400, L + 1))
    s[:100, :5] = 0  # some padding
    batch = model.train_batch(s)
    seq, target = batch["seq"], batch["target"]
    mask_id = model.encoder.mask_id
    assert mask_id == N_ITEMS + 1
    assert seq.shape == target.shape == (400, L)
    masked = seq == mask_id
    assert torch.equal(masked, target > 0)
    assert torch.equal(target[masked], s[:, 1:][masked])
    assert not (masked & (s[:, 1:] == 0)).any()
    assert masked.any(dim=1).all()
    assert 0.25 < masked.float().sum() / (s[:, 1:] > 0).sum() < 0.36
    model.last_ratio = 1.0
    batch = model.train_batch(s)
    only_last = torch.zeros(400, L, dtype=torch.bool)
    only_last[:, -1] = True
    assert torch.equal(batch["seq"] == mask_id, only_last)
    # inference appends [MASK] after the history
    assert torch.equal(model.eval_input(s[:, 1:])[:, -1], torch.full((400,), mask_id))


def test_sample_negatives_exclude_positive_and_padding() -> None:
    torch.manual_seed(0)
    pos = torch.randint(1, 6, (5000,))
    neg = sample_negatives(pos, 4, 5)
    assert neg.shape == (5000, 4)
    assert (neg != pos[:, None]).all() and (neg >= 1).all() and (neg <= 5).all()
    counts = torch.bincount(neg.flatten(), minlength=6)[1:].float()
    assert counts.min() / counts.max() > 0.9


def test_fast_dropout_rate_and_expectation() -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = fast_dropout(x, 0.2)
    assert abs((y == 0).float().mean().item() - 51 / 256) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x, 0.2), y)
    assert torch.equal(fast_dropout(x, 0.2, training=False), x)


def toy_sequences(n: int = 64) -> torch.Tensor:
    """Each user walks the catalogue: item i is followed by i + 1 (learnable)."""
    start = torch.randint(1, N_ITEMS - L, (n, 1))
    return start + torch.arange(L + 1)[None, :]


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "gru4rec"])
@pytest.mark.parametrize("loss", ["ce", "bce", "sampled_softmax"])
def test_every_loss_learns_a_toy_problem(backbone: str, loss: str) -> None:
    model = make(backbone, loss=loss, n_neg=4, dropout=0.0, attn_dropout=0.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    torch.manual_seed(0)
    data = toy_sequences()
    losses = []
    for _ in range(40):
        loss_value = model.calculate_loss(model.train_batch(data))
        opt.zero_grad()
        loss_value.backward()
        opt.step()
        losses.append(loss_value.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_dual_view_scores_are_sums_of_per_view_dots() -> None:
    torch.manual_seed(0)
    enc = MultiViewEncoder([IdEncoder(N_ITEMS, 16), IdEncoder(N_ITEMS, 16)])
    cfg = ModelConfig(backbone="sasrec", hidden=16, heads=2, inner=32, max_len=L)
    model = build_model(cfg, N_ITEMS, encoder=enc).eval()
    single = build_model(cfg, N_ITEMS).eval()
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    assert backbone_params == sum(p.numel() for p in single.backbone.parameters())  # shared
    s = seqs()
    user = model.user_repr({"seq": s})
    assert user.shape == (2, 32)
    full = model.full_sort_predict({"seq": s})
    views = enc.all_items()  # [I + 1, 2, 16]
    per_view = sum(user[:, 16 * v : 16 * (v + 1)] @ views[:, v].T for v in range(2))
    assert torch.allclose(full, per_view, atol=1e-5)
    # each view's sequence runs through the same backbone on its own
    h_view1 = model.backbone(enc.encoders[1](s).squeeze(2), s == 0)[:, -1]
    assert torch.allclose(user[:, 16:], h_view1, atol=1e-5)
    cand = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert torch.allclose(model.predict({"seq": s}, cand), full.gather(1, cand), atol=1e-5)

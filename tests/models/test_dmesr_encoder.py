"""DMESR encoder: shapes, masking, alignment, and that ablation switches remove components."""

from __future__ import annotations

import pytest
import torch

from dmesr.models.dmesr import DMESRConfig, DMESREncoder, alignment_loss, masked_mean

N_ITEMS, DIM = 30, 16


def _features(seed: int = 0, missing_img: tuple[int, ...] = (3, 4)):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N_ITEMS + 1, 8, generator=g)
    mllm = {}
    for k, name in enumerate(["img", "txt", "mm"]):
        proj = torch.randn(8, 12, generator=g)
        table = base @ proj + 0.1 * torch.randn(N_ITEMS + 1, 12, generator=g)
        mask = torch.ones(N_ITEMS + 1, dtype=torch.bool)
        if name in ("img", "mm"):
            mask[list(missing_img)] = False
            table[list(missing_img)] = 0.0
        mllm[name] = (table * (k + 1), mask)
    text = {f: (torch.randn(N_ITEMS + 1, 10, generator=g), torch.ones(N_ITEMS + 1, dtype=torch.bool))
            for f in ["title", "genres"]}
    return mllm, text


def _encoder(**overrides) -> DMESREncoder:
    mllm, text = _features()
    return DMESREncoder(N_ITEMS, DIM, mllm, text, DMESRConfig(**overrides))


def test_shapes_and_padding():
    enc = _encoder()
    ids = torch.tensor([[0, 1, 2], [3, 0, 5]])
    out = enc(ids)
    assert out.shape == (2, 3, 3, DIM)
    assert torch.all(out[0, 0] == 0) and torch.all(out[1, 1] == 0)
    assert enc.all_items().shape == (N_ITEMS + 1, 3, DIM)
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc(ids), enc.all_items()[ids])


def test_missing_views_do_not_leak_into_fusion():
    """Changing the stored (masked) img features of an item without image changes nothing."""
    mllm, text = _features()
    enc = DMESREncoder(N_ITEMS, DIM, mllm, text, DMESRConfig()).eval()
    before = enc.all_items()[3].clone()
    enc.m0[3] = 100.0  # img of item 3 is masked
    enc.m2[3] = -50.0  # mm of item 3 is masked
    enc.train().eval()  # drop the cache
    assert torch.allclose(enc.all_items()[3], before)


def test_alignment_loss_skips_missing_pairs_and_falls_when_trained():
    mllm, text = _features()
    enc = DMESREncoder(N_ITEMS, DIM, mllm, text, DMESRConfig(adapter_dropout=0.0))
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    ids = torch.arange(1, N_ITEMS + 1)
    losses = []
    for _ in range(60):
        enc.new_step()
        enc(ids)
        loss = enc.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    views = torch.randn(4, 3, DIM)
    mask = torch.tensor([[1, 0, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    # only pair (0, 2) has >= 2 items with both views; a masked view cannot change the loss
    a = alignment_loss(views, mask, 0.1)
    views[:, 1] = 7.0
    assert torch.allclose(a, alignment_loss(views, mask, 0.1))


def test_no_alignment_switch_removes_loss():
    enc = _encoder(align_weight=0.0)
    enc.new_step()
    enc(torch.tensor([1, 2, 3]))
    assert enc.aux_loss() is None


def test_no_fusion_switch_bypasses_cross_attention():
    enc = _encoder(fusion="mean")
    enc.new_step()
    enc(torch.tensor([[1, 2, 3]])).sum().backward()
    assert all(p.grad is None for p in enc.fuse_m.parameters())
    assert all(p.grad is None for p in enc.fuse_t.parameters())
    enc = _encoder()
    enc.new_step()
    enc(torch.tensor([[1, 2, 3]])).sum().backward()
    assert any(p.grad is not None for p in enc.fuse_m.parameters())


def test_view_switches():
    assert _encoder(out_views=["mllm"]).all_items().shape[1] == 1
    assert _encoder(out_views=["text", "mllm"]).id_embedding is None
    enc = _encoder(out_views=["text", "mllm", "id"], id_init="pca")
    assert enc.id_embedding.weight[1:].abs().sum() > 0 and enc.id_embedding.weight[0].abs().sum() == 0


def test_masked_mean_all_missing_is_zero():
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[False] * 3, [True, False, False]])
    out = masked_mean(x, mask)
    assert torch.all(out[0] == 0) and torch.allclose(out[1], x[1, 0])


def test_batch_scope_matches_all_scope():
    torch.manual_seed(0)
    a = _encoder(fusion_scope="all", adapter_dropout=0.0)
    b = _encoder(fusion_scope="batch", adapter_dropout=0.0)
    b.load_state_dict(a.state_dict())
    ids = torch.tensor([[1, 5, 5, 0], [2, 9, 1, 3]])
    a.new_step()
    b.new_step()
    assert torch.allclose(a(ids), b(ids), atol=1e-6)


@pytest.mark.parametrize("keys", ["concat", "mean"])
def test_sequence_fusion_is_causal_and_ignores_padding(keys):
    enc = _encoder(sequence_fusion=["text", "mllm", "id"], adapter_dropout=0.0,
                   sequence_keys=keys).eval()
    seq = torch.tensor([[0, 0, 4, 7, 9, 2]])
    with torch.no_grad():
        emb = enc(seq)
        out = enc.sequence_mix(emb, seq == 0, causal=True)
        changed = seq.clone()
        changed[0, -1] = 11  # a future item
        out2 = enc.sequence_mix(enc(changed), changed == 0, causal=True)
    assert out.shape == emb.shape
    assert torch.allclose(out[:, :-1], out2[:, :-1], atol=1e-6)
    assert not torch.allclose(out[:, -1], out2[:, -1])
    assert torch.all(out[0, :2] == 0)
    assert not torch.allclose(out[0, 2:], emb[0, 2:])  # every listed view is fused
    assert _encoder(sequence_fusion=[]).sequence_mix(emb, seq == 0, True) is emb  # none


def test_sequence_mean_keys_are_the_mean_of_the_other_views():
    """Mean keys: view v attends to one sequence, the mean of the others; for two views
    that is the other view itself, so it equals concatenated keys exactly."""
    from dmesr.models.dmesr import SequenceFusion

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, DIM)
    pad = torch.tensor([[True, False, False, False, False]] * 2)
    mean = SequenceFusion(DIM, 3, 2, 0.0, keys="mean").eval()
    concat = SequenceFusion(DIM, 3, 2, 0.0, keys="concat").eval()
    concat.load_state_dict(mean.state_dict())
    view0 = SequenceFusion(DIM, 2, 2, 0.0, keys="concat").eval()  # view 0 vs one sequence
    view0.attn[0].load_state_dict(mean.attn[0].state_dict())
    view0.norms[0].load_state_dict(mean.norms[0].state_dict())
    two = SequenceFusion(DIM, 2, 2, 0.0, keys="mean").eval()
    two_concat = SequenceFusion(DIM, 2, 2, 0.0, keys="concat").eval()
    two_concat.load_state_dict(two.state_dict())
    with torch.no_grad():
        y = mean(x, pad, causal=True)
        keys = (x[:, :, 1] + x[:, :, 2]) / 2
        alone = view0(torch.stack([x[:, :, 0], keys], dim=2), pad, causal=True)
        assert torch.allclose(y[:, :, 0], alone[:, :, 0], atol=1e-6)
        assert not torch.allclose(y, concat(x, pad, causal=True), atol=1e-4)
        pair = x[:, :, :2]
        assert torch.allclose(two(pair, pad, True), two_concat(pair, pad, True), atol=1e-6)


def test_sequence_fusion_leaves_unlisted_views_alone():
    enc = _encoder(sequence_fusion=["id", "text"], adapter_dropout=0.0).eval()
    seq = torch.tensor([[0, 3, 4, 7]])
    with torch.no_grad():
        emb = enc(seq)
        out = enc.sequence_mix(emb, seq == 0, causal=False)
    mllm = enc.cfg.out_views.index("mllm")
    assert torch.equal(out[:, :, mllm], emb[:, :, mllm])
    assert not torch.allclose(out[:, 1:, enc.cfg.out_views.index("id")],
                              emb[:, 1:, enc.cfg.out_views.index("id")])


def test_sequence_fusion_needs_two_listed_out_views():
    with pytest.raises(ValueError, match="sequence_fusion"):
        _encoder(sequence_fusion=["text"])
    with pytest.raises(ValueError, match="sequence_fusion"):
        _encoder(out_views=["text", "mllm"], sequence_fusion=["text", "id"])


def test_concat_baseline_uses_one_adapter_over_all_mllm_views():
    enc = _encoder(fusion="concat", out_views=["id", "mllm"], align_weight=0.0)
    assert enc.concat_adapter is not None
    assert enc.concat_adapter.net[0].in_features == 36
    enc.new_step()
    enc(torch.tensor([[1, 2]])).sum().backward()
    assert all(p.grad is None for a in enc.m_adapters for p in a.parameters())


def test_fusion_gate_starts_as_identity():
    torch.manual_seed(0)
    gated = _encoder(fusion_gate=True, adapter_dropout=0.0, out_views=["text", "mllm"]).eval()
    plain = _encoder(fusion="mean", adapter_dropout=0.0, out_views=["text", "mllm"]).eval()
    plain.load_state_dict(gated.state_dict(), strict=False)
    ids = torch.arange(1, N_ITEMS + 1)
    with torch.no_grad():
        # tanh(0) = 0: each side is LN(its own adapted views), pooled, before training
        t, t_mask = gated._stack("t", gated.t_adapters, ids)
        expected = masked_mean(gated.fuse_t.norm(t), t_mask)
        assert torch.allclose(gated.fused(ids)[:, 0], expected, atol=1e-6)
        assert not torch.allclose(gated.fused(ids)[:, 0], plain.fused(ids)[:, 0])


def test_pca_text_init_ignores_mllm_features():
    mllm, text = _features()
    cfg = DMESRConfig(id_init="pca_text")
    other = {k: (torch.randn_like(t), m) for k, (t, m) in mllm.items()}
    encoders = []
    for tables, c in ((mllm, cfg), (other, cfg), (other, DMESRConfig(id_init="pca"))):
        torch.manual_seed(0)  # torch.pca_lowrank is randomised
        encoders.append(DMESREncoder(N_ITEMS, DIM, tables, text, c))
    a, b, c = encoders
    assert torch.allclose(a.id_embedding.weight, b.id_embedding.weight, atol=1e-5)
    assert not torch.allclose(b.id_embedding.weight, c.id_embedding.weight, atol=1e-5)


def test_standardize_z_scores_present_rows_and_keeps_absent_rows_zero():
    from dmesr.models.dmesr import standardize

    table = torch.tensor([[0.0, 0.0], [1.0, 10.0], [3.0, 10.0], [5.0, 13.0], [9.0, 9.0]])
    present = torch.tensor([False, True, True, True, False])
    z = standardize(table, present)
    assert torch.allclose(z[1:4].mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z[1:4].std(0), torch.ones(2), atol=1e-6)
    assert torch.all(z[[0, 4]] == 0)


def test_feature_norm_standardizes_the_encoder_inputs_only_when_asked():
    mllm, text = _features()
    raw = DMESREncoder(N_ITEMS, DIM, mllm, text, DMESRConfig())
    std = DMESREncoder(N_ITEMS, DIM, mllm, text, DMESRConfig(feature_norm="standardize"))
    assert torch.equal(raw.m0, mllm["img"][0].float())
    present = std.m0_mask
    assert torch.allclose(std.m0[present].mean(0), torch.zeros(12), atol=1e-5)
    assert torch.all(std.m0[~present] == 0)


@pytest.mark.parametrize("fusion", ["cross_attention", "concat"])
def test_whole_catalogue_path_equals_the_gather(fusion):
    """`fused(ids, whole=True)` reads the tables without gathering rows: same output, and
    in training the same gradients (one dropout draw for both)."""
    enc = _encoder(fusion=fusion, out_views=["text", "mllm", "id"])
    ids = torch.arange(N_ITEMS + 1)
    grads = []
    for whole in (False, True):
        enc.train()
        enc.zero_grad()
        torch.manual_seed(0)
        out = enc.fused(ids, whole=whole)
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in enc.parameters() if p.grad is not None])
        enc.eval()
        with torch.no_grad():
            assert torch.equal(enc.fused(ids, whole=whole), enc.fused(ids))
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_input_dropout_is_its_own_switch():
    enc = _encoder(adapter_dropout=0.3, input_dropout=0.0)
    adapters = [*enc.m_adapters, *enc.t_adapters]
    assert all(a.dropout.p == 0.0 for a in adapters)
    assert all(a.net[2].p == 0.3 for a in adapters)  # the hidden dropout stays
    assert all(a.dropout.p == 0.3 for a in _encoder(adapter_dropout=0.3).m_adapters)

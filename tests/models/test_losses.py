"""The blocked full-catalogue cross-entropy equals the one-block computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmesr.models.losses import catalogue_cross_entropy


def _plain(h: torch.Tensor, w: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = h @ w.T
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, target)


@pytest.mark.parametrize("rows", [1, 7, 64, 299])
def test_blocks_give_the_same_loss_and_gradients(rows: int) -> None:
    torch.manual_seed(0)
    h = torch.randn(300, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 40, (300,))
    ref = _plain(h, w, target)
    ref_h, ref_w = torch.autograd.grad(ref, (h, w))
    block_mb = rows * 40 * 8 / 2**20  # exactly `rows` rows per block
    out = catalogue_cross_entropy(h, w, target, block_mb)
    assert out.grad_fn is not None and "Blocked" in type(out.grad_fn).__name__
    out_h, out_w = torch.autograd.grad(out, (h, w))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out_h, ref_h)
    torch.testing.assert_close(out_w, ref_w)


def test_padding_column_is_never_a_candidate() -> None:
    h = torch.ones(4, 2)
    w = torch.tensor([[100.0, 100.0], [1.0, 0.0], [0.0, 1.0]])  # row 0 would dominate
    loss = catalogue_cross_entropy(h, w, torch.tensor([1, 2, 1, 2]), block_mb=2 * 3 * 4 / 2**20)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_only_the_needed_gradients_are_computed() -> None:
    h = torch.randn(10, 4, requires_grad=True)
    w = torch.randn(6, 4)  # a frozen table: no gradient asked for
    loss = catalogue_cross_entropy(h, w, torch.randint(1, 6, (10,)), block_mb=1e-5)
    loss.backward()
    assert h.grad is not None and w.grad is None


def test_one_block_when_everything_fits() -> None:
    h = torch.randn(5, 4, requires_grad=True)
    out = catalogue_cross_entropy(h, torch.randn(6, 4), torch.randint(1, 6, (5,)), 8.0)
    assert "Blocked" not in type(out.grad_fn).__name__

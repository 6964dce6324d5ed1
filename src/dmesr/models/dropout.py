"""Dropout whose mask costs one random int64 per 8 elements.

On CPU, `torch.bernoulli_` draws one random number per element and dominated a
SASRec-sized training step (SPEC §7). Here each element's keep/drop decision uses one
random byte: `randint` fills int64 words (8 bytes per draw) from the same global torch
generator, so runs stay reproducible and checkpointable. The rate is quantised to
multiples of 1/256 (0.2 -> 51/256 = 0.199), and survivors are scaled by 1 / (1 - p_q)
so the expectation is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor


def byte_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[Tensor, float]:
    """Boolean keep-mask of `shape` with drop rate round(256 p) / 256, and that rate."""
    threshold = round(p * 256)
    n = shape.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=device)
    keep = words.view(torch.uint8)[:n].view(shape) >= threshold
    return keep, threshold / 256


def fast_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    if not training or p <= 0:
        return x
    keep, p_q = byte_mask(x.shape, p, x.device)
    if p_q >= 1:
        return x * 0.0
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p_q))  # in place: one pass fewer


class FastDropout(torch.nn.Module):
    """`nn.Dropout` with the cheap byte mask of `fast_dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout: float,
              training: bool, fused: bool = True) -> Tensor:
    """Scaled dot-product attention, q [..., Lq, dh], k/v [..., Lk, dh], allowed: True = may
    attend. Without dropout it is SDPA's fused kernel (unless `fused=False`: plain matmuls
    are faster for many tiny attention problems on CPU); with dropout the probabilities get
    the byte mask (SDPA would draw one bernoulli per attention weight on CPU)."""
    if fused and (not training or dropout <= 0):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    # Scales go on the [.., L, dh] operands, not the [.., L, L] scores, and the mask is
    # filled in place: 25% less time than the textbook order for SASRec's shapes.
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    probs = scores.masked_fill_(~allowed, float("-inf")).softmax(-1)
    if not training or dropout <= 0:
        return probs @ v
    keep, p_q = byte_mask(probs.shape, dropout, probs.device)
    if p_q >= 1:
        return (probs @ v) * 0.0
    return ((probs * keep) @ v) * (1.0 / (1.0 - p_q))

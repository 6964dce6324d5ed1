"""Transformer blocks for SASRec and BERT4Rec (fused QKV + `scaled_dot_product_attention`)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmesr.models.dropout import attention, fast_dropout
from dmesr.models.sequential import Backbone

Norm = Literal["pre", "post"]


class Block(nn.Module):
    """Self-attention + position-wise FFN with residuals.

    pre-LN (SASRec paper, Kang & McAuley 2018): x + Drop(f(LN(x))), final LN after the
    stack; post-LN (RecBole, BERT): LN(x + Drop(f(x))).
    """

    def __init__(
        self, d: int, heads: int, inner: int, dropout: float, attn_dropout: float,
        norm: Norm, act: str,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.norm = norm
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ff1 = nn.Linear(d, inner)
        self.ff2 = nn.Linear(inner, d)
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.act = {"gelu": F.gelu, "relu": F.relu}[act]
        self.dropout = dropout
        self.attn_dropout = attn_dropout

    def _attn(self, x: Tensor, mask: Tensor) -> Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4
        )
        y = attention(q, k, v, mask, self.attn_dropout, self.training)
        return self.out(y.transpose(1, 2).reshape(b, length, d))

    def _ffn(self, x: Tensor) -> Tensor:
        return self.ff2(self.act(self.ff1(x)))

    def _drop(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.dropout, self.training)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.norm == "pre":
            x = x + self._drop(self._attn(self.ln1(x), mask))
            return x + self._drop(self._ffn(self.ln2(x)))
        x = self.ln1(x + self._drop(self._attn(x, mask)))
        return self.ln2(x + self._drop(self._ffn(x)))


class TransformerBackbone(Backbone):
    """Item embeddings + learned positions -> a stack of blocks.

    Positions are column indices of the left-padded input (Kang's SASRec): the most recent
    item always has position L - 1. Padding keys are masked; each query may also see
    itself, so the all-padding rows of short sequences stay finite (their outputs are
    zeroed and never used).
    """

    def __init__(
        self, d: int, max_len: int, layers: int = 2, heads: int = 2, inner: int = 256,
        dropout: float = 0.2, attn_dropout: float = 0.2, emb_dropout: float | None = None,
        norm: Norm = "pre", act: str = "gelu", causal: bool = True,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.norm = norm
        self.scale = d**0.5 if norm == "pre" else 1.0  # Kang's embedding scaling
        self.pos = nn.Embedding(max_len, d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.emb_ln = nn.LayerNorm(d) if norm == "post" else nn.Identity()
        self.emb_dropout = dropout if emb_dropout is None else emb_dropout
        self.blocks = nn.ModuleList(
            Block(d, heads, inner, dropout, attn_dropout, norm, act) for _ in range(layers)
        )
        self.final_ln = nn.LayerNorm(d) if norm == "pre" else nn.Identity()
        self.register_buffer(
            "tril", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool)), persistent=False
        )
        self.register_buffer("eye", torch.eye(max_len, dtype=torch.bool), persistent=False)

    def attention_mask(self, pad: Tensor) -> Tensor:
        """[B, 1, L, L] boolean, True = may attend."""
        length = pad.shape[1]
        keep = ~pad[:, None, None, :]
        if self.causal:
            keep = keep & self.tril[:length, :length]
        return keep | self.eye[:length, :length]

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        length = x.shape[1]
        start = self.pos.num_embeddings - length  # shorter inputs keep the last positions
        h = x * self.scale + self.pos.weight[start:]
        h = self.emb_ln(h)
        h = fast_dropout(h, self.emb_dropout, self.training)
        valid = (~pad)[..., None].to(h.dtype)
        h = h * valid
        mask = self.attention_mask(pad)
        for block in self.blocks:
            h = block(h, mask) * valid  # padding rows stay zero (Kang's timeline mask)
        return self.final_ln(h) * valid

"""SASRec, BERT4Rec and GRU4Rec on top of the shared contract (`SequentialRecommender`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmesr.models.dropout import fast_dropout
from dmesr.models.item_encoders import ItemEncoder
from dmesr.models.sequential import Backbone, Batch, LossType, SequentialRecommender
from dmesr.models.transformer import Norm, TransformerBackbone


class SASRec(SequentialRecommender):
    """Causal self-attention; next-item loss at every position of one sequence per user."""

    def __init__(
        self, encoder: ItemEncoder, max_len: int, layers: int = 2, heads: int = 2,
        inner: int = 256, dropout: float = 0.2, attn_dropout: float = 0.2,
        emb_dropout: float | None = None, norm: Norm = "pre", act: str = "gelu",
        loss: LossType = "ce", n_neg: int = 1,
    ) -> None:
        backbone = TransformerBackbone(
            encoder.view_dim, max_len, layers, heads, inner, dropout, attn_dropout,
            emb_dropout, norm, act, causal=True,
        )
        super().__init__(encoder, backbone, loss, n_neg)


class BERT4RecBackbone(TransformerBackbone):
    """Bidirectional transformer + BERT4Rec's prediction head (Linear-GELU-LN)."""

    def __init__(self, d: int, max_len: int, **kw: object) -> None:
        super().__init__(d, max_len, causal=False, **kw)  # type: ignore[arg-type]
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        return self.head(super().forward(x, pad)).masked_fill(pad[..., None], 0.0)


class BERT4Rec(SequentialRecommender):
    """Cloze objective: mask items with prob `mask_prob`; a fraction `last_ratio` of the
    sequences instead has only its last item masked (the fine-tuning trick that matches
    inference, where [MASK] is appended after the history)."""

    def __init__(
        self, encoder: ItemEncoder, max_len: int, layers: int = 2, heads: int = 2,
        inner: int = 256, dropout: float = 0.2, attn_dropout: float = 0.2,
        emb_dropout: float | None = None, norm: Norm = "post", act: str = "gelu",
        loss: LossType = "ce", n_neg: int = 1, mask_prob: float = 0.2, last_ratio: float = 0.1,
    ) -> None:
        encoder.enable_mask_token()
        backbone = BERT4RecBackbone(
            encoder.view_dim, max_len, layers=layers, heads=heads, inner=inner,
            dropout=dropout, attn_dropout=attn_dropout, emb_dropout=emb_dropout, norm=norm,
            act=act,
        )
        super().__init__(encoder, backbone, loss, n_neg)
        self.mask_prob = mask_prob
        self.last_ratio = last_ratio

    def eval_input(self, seq: Tensor) -> Tensor:
        # drop the oldest column and append [MASK]: the state at the mask is the user repr
        mask_col = seq.new_full((seq.shape[0], 1), self.encoder.mask_id)
        return torch.cat([seq[:, 1:], mask_col], dim=1)

    def train_batch(self, seqs: Tensor) -> Batch:
        seq = seqs[:, 1:]  # the last L items of each training sequence
        real = seq > 0
        masked = (torch.rand(seq.shape, device=seq.device) < self.mask_prob) & real
        last_only = torch.rand(seq.shape[0], device=seq.device) < self.last_ratio
        masked[last_only] = False
        # a row that got no mask (or was chosen for last-only) masks its last item
        no_mask = ~masked.any(dim=1)
        masked[:, -1] |= no_mask & real[:, -1]
        target = seq.masked_fill(~masked, 0)
        return {"seq": seq.masked_fill(masked, self.encoder.mask_id), "target": target}


class GRUBackbone(Backbone):
    """GRU over the sequence (RecBole's GRU4Rec: emb dropout, GRU, dense back to d).

    A GRU reading left padding would change its state, so rows are rotated to right
    padding (a gather), run, and rotated back; valid outputs then never see padding.
    """

    def __init__(self, d: int, hidden: int = 128, layers: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.dropout = dropout
        self.gru = nn.GRU(d, hidden, layers, batch_first=True, bias=False)
        self.dense = nn.Linear(hidden, d)
        for name, w in self.gru.named_parameters():
            if "weight_ih" in name:
                nn.init.xavier_uniform_(w)
            elif "weight_hh" in name:
                nn.init.orthogonal_(w)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        length = x.shape[1]
        n_pad = pad.sum(dim=1, keepdim=True)
        cols = torch.arange(length, device=x.device)[None, :]
        to_right = ((cols + n_pad) % length)[..., None].expand(-1, -1, x.shape[2])
        h = fast_dropout(x, self.dropout, self.training)
        out, _ = self.gru(h.gather(1, to_right))
        out = self.dense(out)
        to_left = ((cols - n_pad) % length)[..., None].expand(-1, -1, out.shape[2])
        return out.gather(1, to_left).masked_fill(pad[..., None], 0.0)


class GRU4Rec(SequentialRecommender):
    def __init__(
        self, encoder: ItemEncoder, hidden: int = 128, layers: int = 1, dropout: float = 0.3,
        loss: LossType = "ce", n_neg: int = 1,
    ) -> None:
        super().__init__(encoder, GRUBackbone(encoder.view_dim, hidden, layers, dropout), loss, n_neg)

"""The model contract shared by every sequential recommender (RecBole spirit).

  calculate_loss(batch) -> scalar Tensor         (training)
  predict(batch, candidates [B, C]) -> [B, C]    (sampled ranking)
  full_sort_predict(batch) -> [B, n_items + 1]   (full ranking; column 0 = padding)

A batch is a dict of tensors. Evaluation batches hold `seq` [B, L]: the user's history,
left-padded with 0 (the most recent item in the last column). Training batches are
built by `train_batch(seqs)` from left-padded training sequences [B, L + 1].

Dual-view integration (SPEC §1.2): the item encoder yields V views of width d; ONE
backbone runs over each view's embedding sequence (views folded into the batch); the user
representation is the concatenation of the per-view outputs and an item's score is its
dot product with the concatenation of its view embeddings (= sum of per-view dots).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmesr.models.item_encoders import ItemEncoder
from dmesr.models.losses import catalogue_cross_entropy

LossType = Literal["bce", "ce", "sampled_softmax"]
Batch = dict[str, Tensor]


def sample_negatives(pos: Tensor, n_neg: int, n_items: int) -> Tensor:
    """[N] positives -> [N, n_neg] uniform negatives from 1..n_items, never the positive.

    Drawing from n_items - 1 values and shifting those >= pos by one excludes the positive
    exactly (and padding) without rejection loops.
    """
    r = torch.randint(1, n_items, (pos.shape[0], n_neg), device=pos.device)
    return r + (r >= pos[:, None]).long()


class Backbone(nn.Module):
    """Maps item-embedding sequences [N, L, d] (+ padding mask [N, L]) to states [N, L, d]."""

    causal: bool = True

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        raise NotImplementedError


class SequentialRecommender(nn.Module):
    """Encoder + backbone + loss. Subclasses define `train_batch` and the eval input."""

    trainable = True
    ce_block_mb: float = 8.0  # `ce` loss: logits computed in blocks of this size (losses.py)

    def __init__(
        self, encoder: ItemEncoder, backbone: Backbone, loss: LossType = "ce", n_neg: int = 1
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = backbone
        self.loss_type = loss
        self.n_neg = n_neg

    @property
    def n_items(self) -> int:
        return self.encoder.n_items

    # ---- representations -------------------------------------------------------------
    def states(self, seq: Tensor) -> Tensor:
        """seq [B, L] -> per-position user states [B, L, V * d]."""
        emb = self.encoder(seq)  # [B, L, V, d]
        emb = self.encoder.sequence_mix(emb, seq == 0, self.backbone.causal)
        b, length, v, d = emb.shape
        if v == 1:
            return self.backbone(emb.squeeze(2), seq == 0)
        x = emb.transpose(1, 2).reshape(b * v, length, d)
        pad = (seq == 0).repeat_interleave(v, dim=0)
        h = self.backbone(x, pad).reshape(b, v, length, d)
        return h.transpose(1, 2).reshape(b, length, v * d)

    def eval_input(self, seq: Tensor) -> Tensor:
        """History [B, L] -> the sequence the backbone reads at inference."""
        return seq

    def user_repr(self, batch: Batch) -> Tensor:
        """[B, V * d]: the state at the last position of the (left-padded) input."""
        return self.states(self.eval_input(batch["seq"]))[:, -1]

    def item_matrix(self) -> Tensor:
        table = self.encoder.all_items()
        return table.reshape(table.shape[0], -1)

    def item_vectors(self, ids: Tensor) -> Tensor:
        emb = self.encoder(ids)
        return emb.reshape(*ids.shape, -1)

    # ---- contract ----------------------------------------------------------------------
    def train_batch(self, seqs: Tensor) -> Batch:
        """Left-padded training sequences [B, L + 1] -> next-item batch (input, targets)."""
        seq, target = seqs[:, :-1], seqs[:, 1:]
        return {"seq": seq, "target": target.masked_fill(seq == 0, 0)}

    def calculate_loss(self, batch: Batch) -> Tensor:
        self.encoder.new_step()
        h = self.states(batch["seq"])
        target = batch["target"]
        keep = target > 0
        loss = self.rec_loss(h[keep], target[keep])
        aux = self.encoder.aux_loss()
        return loss if aux is None else loss + aux

    def rec_loss(self, h: Tensor, pos: Tensor) -> Tensor:
        """Loss of states h [N, D] for positive items pos [N]."""
        if pos.numel() == 0:
            return h.sum() * 0.0
        if self.loss_type == "ce":
            return catalogue_cross_entropy(h, self.item_matrix(), pos, self.ce_block_mb)
        neg = sample_negatives(pos, self.n_neg, self.n_items)
        cand = self.item_vectors(torch.cat([pos[:, None], neg], dim=1))  # [N, 1 + n, D]
        scores = torch.einsum("nd,nkd->nk", h, cand)
        if self.loss_type == "bce":
            # -log σ(s+) - mean log(1 - σ(s-)): RecBole's BCE when n_neg = 1
            return (F.softplus(-scores[:, 0]) + F.softplus(scores[:, 1:]).mean(1)).mean()
        if self.loss_type == "sampled_softmax":
            return F.cross_entropy(scores, torch.zeros_like(pos))
        raise ValueError(f"unknown loss type '{self.loss_type}'")

    def predict(self, batch: Batch, candidates: Tensor) -> Tensor:
        user = self.user_repr(batch)
        return torch.einsum("bd,bcd->bc", user, self.item_vectors(candidates))

    def full_sort_predict(self, batch: Batch) -> Tensor:
        return self.user_repr(batch) @ self.item_matrix().T

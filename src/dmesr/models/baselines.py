"""Non-neural baselines under the same contract as the sequential models."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from dmesr.models.sequential import Batch


class Pop(nn.Module):
    """Most-popular: every user gets the items ranked by training popularity.

    Scores are log(1 + count) with a tiny id-based tie-break, so ties are not broken in
    the model's favour by the pessimistic ranking.
    """

    trainable = False

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.register_buffer("scores", torch.zeros(n_items + 1))

    def fit(self, popularity: np.ndarray) -> Pop:
        counts = torch.as_tensor(np.asarray(popularity), dtype=torch.float32)
        tie_break = torch.arange(self.n_items + 1, dtype=torch.float32) * 1e-6 / (self.n_items + 1)
        self.scores.copy_(torch.log1p(counts) - tie_break)
        self.scores[0] = float("-inf")
        return self

    def train_batch(self, seqs: Tensor) -> Batch:
        return {"seq": seqs[:, :-1]}

    def calculate_loss(self, batch: Batch) -> Tensor:
        return torch.zeros(())

    def predict(self, batch: Batch, candidates: Tensor) -> Tensor:
        return self.scores[candidates]

    def full_sort_predict(self, batch: Batch) -> Tensor:
        return self.scores[None, :].expand(batch["seq"].shape[0], -1)

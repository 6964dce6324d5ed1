"""Ranking and metrics on hand-computed cases (ties pessimistic, history exclusion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dmesr.eval.evaluate import EvalSplit, full_ranks, sampled_ranks
from dmesr.eval.metrics import make_groups, per_user_metrics, ranks_from_scores, summarise


def test_ties_rank_pessimistically() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.9], [1.0, 1.0, 1.0, 1.0], [0.0, 3.0, 2.0, 1.0]])
    ranks = ranks_from_scores(scores, torch.tensor([1, 0, 1]))
    # row 0: 0.5 (tie) and 0.9 are >= the target's 0.5 -> rank 3, not 2
    # row 1: all tied -> last of 4; row 2: the best -> 1
    assert ranks.tolist() == [3, 4, 1]


def test_excluded_items_do_not_compete_but_target_always_does() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.9]])
    excluded = torch.tensor([[False, True, False, True]])  # target (col 1) marked too
    assert ranks_from_scores(scores, torch.tensor([1]), excluded).tolist() == [2]


def test_per_user_metrics_hand_computed() -> None:
    m = per_user_metrics(np.array([1, 3, 11, 25]), [5, 10, 20], 10)
    assert m["HR@5"].tolist() == [1, 1, 0, 0]
    assert m["HR@20"].tolist() == [1, 1, 1, 0]
    assert m["NDCG@10"].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert m["NDCG@20"][2] == pytest.approx(1 / math.log2(12))
    assert m["MRR@10"].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0])


class FixedScores(nn.Module):
    """A 'model' whose scores are a fixed [U, I + 1] matrix, rows picked by the history."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = scores
        self.n_items = scores.shape[1] - 1

    def _rows(self, batch: dict) -> torch.Tensor:
        return self.scores[batch["seq"][:, 0]]  # column 0 of the history carries the row id

    def full_sort_predict(self, batch: dict) -> torch.Tensor:
        return self._rows(batch)

    def predict(self, batch: dict, cand: torch.Tensor) -> torch.Tensor:
        return self._rows(batch).gather(1, cand)


def split_of(histories: list[list[int]], targets: list[int], negatives=None) -> EvalSplit:
    lengths = [len(h) for h in histories]
    seq = torch.tensor([[u] for u in range(len(histories))])  # row id, see FixedScores
    return EvalSplit(
        name="test", seq=seq, targets=torch.tensor(targets),
        hist_indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        hist_items=torch.tensor([i for h in histories for i in h], dtype=torch.long),
        negatives=None if negatives is None else torch.tensor(negatives),
    )


def test_full_ranking_excludes_history_but_never_the_target() -> None:
    #                       pad  1    2    3    4    5
    scores = torch.tensor([[9.0, 0.9, 0.8, 0.7, 0.6, 0.5],
                           [9.0, 0.9, 0.8, 0.7, 0.6, 0.5]])
    # user 0: target 3, history {1, 2} -> both excluded -> rank 1 (padding never counts)
    # user 1: target 2 was also consumed before (repeat) -> still ranked; 1 excluded -> 1
    split = split_of([[1, 2], [2, 1]], [3, 2])
    model = FixedScores(scores)
    assert full_ranks(model, split, exclude_history=True).tolist() == [1, 1]
    assert full_ranks(model, split, exclude_history=False).tolist() == [3, 2]


def test_chunked_full_ranking_equals_unchunked() -> None:
    gen = torch.Generator().manual_seed(0)
    n_users, n_items = 37, 50
    scores = torch.randint(0, 5, (n_users, n_items + 1), generator=gen).float()  # many ties
    hist = [torch.randint(1, n_items + 1, (int(k),), generator=gen).tolist()
            for k in torch.randint(1, 10, (n_users,), generator=gen)]
    targets = torch.randint(1, n_items + 1, (n_users,), generator=gen).tolist()
    split = split_of(hist, targets)
    model = FixedScores(scores)
    whole = full_ranks(model, split, chunk_users=10_000)
    for chunk in (1, 5, 36):
        assert np.array_equal(full_ranks(model, split, chunk_users=chunk), whole)
    # the reference: a plain loop, written independently
    for u in range(n_users):
        s = scores[u].clone()
        t = s[targets[u]].item()
        others = [i for i in range(1, n_items + 1) if i != targets[u] and i not in hist[u]]
        assert whole[u] == 1 + sum(s[i].item() >= t for i in others)


def test_sampled_ranking_uses_saved_negatives() -> None:
    scores = torch.tensor([[0.0, 0.5, 0.9, 0.5, 0.1]])
    split = split_of([[4]], [1], negatives=[[2, 3, 4]])
    # negatives 2 (0.9) and 3 (0.5, tie) beat or tie the target; 4 is in the history
    # but sampled ranking does not exclude anything
    assert sampled_ranks(FixedScores(scores), split).tolist() == [3]


def test_groups_and_thresholds() -> None:
    lengths = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    popularity = np.array([0, 50, 40, 3, 2, 1, 1, 1, 1, 1, 1])  # items 1..10
    targets = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    g = make_groups(lengths, targets, popularity, head_user_frac=0.2, head_item_frac=0.2)
    assert g.masks["head_user"].tolist() == [False] * 8 + [True, True]
    assert g.masks["head_item"].tolist() == [True, True] + [False] * 8
    assert g.thresholds["head_item_min_train_count"] == 40
    m = summarise(np.array([1] * 2 + [100] * 8), [10], 10, "test.full", g)
    assert m["test.full.head_item.HR@10"] == 1.0 and m["test.full.tail_item.HR@10"] == 0.0
    assert m["test.full.HR@10"] == pytest.approx(0.2)
    assert m["test.full.tail_user.n_users"] == 8

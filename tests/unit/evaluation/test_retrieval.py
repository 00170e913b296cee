"""Retrieval Acc / R@k on a hand-built 6x6 similarity matrix, in-batch and full, with re-ranking."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from molm3d_core.evaluation import evaluate_retrieval, reranked_retrieval_scores, retrieval_scores

# Molecule i matches text i (the diagonal, all 5). Off-diagonal distractors:
#   row 0: text 3 (9)      row 1: text 2 (6)      row 4: text 3 (8)      row 5: text 0 (7)
SIM = np.array(
    [
        [5, 1, 0, 9, 0, 0],
        [0, 5, 6, 0, 0, 0],
        [0, 0, 5, 0, 0, 0],
        [0, 0, 0, 5, 0, 0],
        [0, 0, 0, 8, 5, 0],
        [7, 0, 0, 0, 0, 5],
    ],
    dtype=float,
)
# Full set, 0-based ranks of the true partner:
#   molecule->text (rows):    [1, 1, 0, 0, 1, 1]  -> Acc 2/6, R@2 6/6
#   text->molecule (columns): [1, 0, 1, 2, 0, 0]  -> Acc 3/6, R@2 5/6 (text 3 loses to molecules 0 and 4)
# In-batch, batch 3 (blocks 0-2 and 3-5): row 0's 9 and row 5's 7 fall outside their block:
#   rows:    [0, 1, 0, 0, 1, 0] -> Acc 4/6;  columns: [0, 0, 1, 1, 0, 0] -> Acc 4/6


def test_full_set_by_hand():
    s = retrieval_scores(SIM, recall_k=2)
    assert s.m2t_acc == pytest.approx(100 * 2 / 6)
    assert s.m2t_recall == pytest.approx(100.0)
    assert s.t2m_acc == pytest.approx(50.0)
    assert s.t2m_recall == pytest.approx(100 * 5 / 6)
    assert s.as_dict()["t2m_r@2"] == pytest.approx(100 * 5 / 6)


def test_in_batch_by_hand():
    s = retrieval_scores(SIM, batch_size=3, recall_k=1)
    assert s.m2t_acc == pytest.approx(100 * 4 / 6) == s.m2t_recall
    assert s.t2m_acc == pytest.approx(100 * 4 / 6)
    assert s.n == 6


def test_last_batch_may_be_smaller():
    # Batch 4: blocks 0-3 and 4-5. Rows: [1, 1, 0, 0] and [0, 0]; columns: [0, 0, 1, 1] and [0, 0].
    s = retrieval_scores(SIM, batch_size=4, recall_k=1)
    assert s.m2t_acc == pytest.approx(100 * 4 / 6)
    assert s.t2m_acc == pytest.approx(100 * 4 / 6)


def test_ties_count_against_the_model():
    s = retrieval_scores(np.ones((30, 30)))
    assert s.m2t_acc == s.t2m_acc == 0.0
    assert s.m2t_recall == 0.0  # rank 29 for everyone


def test_accepts_torch_bf16_and_rejects_bad_shapes():
    s = retrieval_scores(torch.tensor(SIM, dtype=torch.bfloat16), recall_k=2)
    assert s.t2m_recall == pytest.approx(100 * 5 / 6)
    with pytest.raises(ValueError):
        retrieval_scores(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        retrieval_scores(np.full((2, 2), np.nan))


def test_rerank_changes_a_top1_with_a_hand_made_match_function():
    # The matching head likes only the pair (molecule 0, text 0): +5. Row 0: 5+5=10 beats text 3's 9 -> rank 0;
    # column 0: 10 beats molecule 5's 7 -> rank 0. Nothing else moves.
    calls = []

    def match(mols, texts):
        calls.append((mols.copy(), texts.copy()))
        return np.where((mols == 0) & (texts == 0), 5.0, 0.0)

    s = reranked_retrieval_scores(SIM, match, top_k=2, recall_k=1)
    assert s.m2t_acc == pytest.approx(100 * 3 / 6)  # rows [0, 1, 0, 0, 1, 1]
    assert s.t2m_acc == pytest.approx(100 * 4 / 6)  # columns [0, 0, 1, 2, 0, 0]
    pairs = [(int(m), int(t)) for mols, texts in calls for m, t in zip(mols, texts, strict=True)]
    assert len(pairs) == len(set(pairs))  # each pair is scored once, shared by both directions
    assert (0, 3) in pairs and (0, 0) in pairs and (5, 5) in pairs


def test_rerank_only_reorders_the_top_k():
    # A perfect matching head: the true pair gets +100. Text 3's partner ranks 2 among molecules,
    # outside the top 2 -> it keeps rank 2; everything else becomes rank 0.
    def perfect(mols, texts):
        return torch.where(torch.as_tensor(mols == texts), 100.0, 0.0)  # a tensor return is accepted

    s = reranked_retrieval_scores(SIM, perfect, top_k=2, recall_k=1)
    assert s.m2t_acc == pytest.approx(100.0)
    assert s.t2m_acc == pytest.approx(100 * 5 / 6)
    assert reranked_retrieval_scores(SIM, perfect, top_k=3, recall_k=1).t2m_acc == pytest.approx(100.0)


def test_in_batch_rerank_passes_global_indices():
    seen = set()

    def match(mols, texts):
        seen.update(zip(mols.tolist(), texts.tolist(), strict=True))
        return np.zeros(len(mols))

    s = reranked_retrieval_scores(SIM, match, batch_size=3, recall_k=1, pairs_per_call=2)
    assert s.m2t_acc == pytest.approx(retrieval_scores(SIM, batch_size=3, recall_k=1).m2t_acc)  # zero match: same
    assert seen == {(i, j) for b in (0, 3) for i in range(b, b + 3) for j in range(b, b + 3)}


def _naive_ranks(sim):
    m2t = [int(np.where(np.argsort(-row) == i)[0][0]) for i, row in enumerate(sim)]
    t2m = [int(np.where(np.argsort(-col) == i)[0][0]) for i, col in enumerate(sim.T)]
    return np.array(m2t), np.array(t2m)


def test_matches_a_naive_argsort_implementation_on_random_scores():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(150, 150)) + 1.5 * np.eye(150)
    for batch_size in (None, 64):
        blocks = [(0, 150)] if batch_size is None else [(0, 64), (64, 128), (128, 150)]
        ranks = [_naive_ranks(sim[s:e, s:e]) for s, e in blocks]
        m2t = np.concatenate([r[0] for r in ranks])
        t2m = np.concatenate([r[1] for r in ranks])
        s = retrieval_scores(sim, batch_size=batch_size)
        assert s.m2t_acc == pytest.approx(100 * np.mean(m2t == 0))
        assert s.t2m_recall == pytest.approx(100 * np.mean(t2m < 20))


def test_full_protocol_on_2000_molecules_is_fast():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(2000, 2000)).astype(np.float32) + 2.0 * np.eye(2000, dtype=np.float32)

    def match(mols, texts):
        return np.where(mols == texts, 1.0, 0.0)

    start = time.perf_counter()
    results = evaluate_retrieval(sim, match)
    assert time.perf_counter() - start < 10.0
    assert set(results) == {"in_batch", "full", "in_batch_rerank", "full_rerank"}
    assert results["full_rerank"].m2t_acc >= results["full"].m2t_acc
    assert results["in_batch"].m2t_acc >= results["full"].m2t_acc  # fewer distractors per query

"""Molecule-text retrieval metrics: Acc (top-1) and R@20, both directions, in-batch and full test set.

Input is a similarity matrix `sim` (N, N) where molecule i matches text i (e.g. `MoLM3D.similarity`
of the test set). Molecule->text ranks the texts of a row, text->molecule the molecules of a column.
- "full test set": candidates are all N items.
- "in-batch" (`batch_size=64` in the reference): consecutive blocks [0, 64), [64, 128), ...; each
  query is ranked inside its own block (the last block may be smaller); averaged over all queries.
- re-rank (reference: MolCA / 3D-MoLM): the top `top_k` candidates of each query (128 in the
  reference's runs) are re-scored by `sim + match_score` (the matching head's logit, no softmax) and
  re-ordered; candidates outside the top-k keep their order behind them.
Ties count against the model: the rank of the true partner is the number of *other* candidates
scoring >= it, so a constant similarity matrix gets Acc 0 rather than 100. All scores are x100.

From embeddings (`evaluate_retrieval_embeddings`, what `molm3d eval` runs), the full-test-set settings
go through the retrieval index (`molm3d_core.retrieval`, exact "flat" kind): each text searches an
index of the molecules and each molecule one of the texts, as a deployed index is searched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# (mol_indices (P,), text_indices (P,)) -> (P,) matching scores; indices are rows/columns of `sim`.
MatchScore = Callable[[np.ndarray, np.ndarray], Any]


@dataclass(frozen=True)
class RetrievalScores:
    """Acc and R@k (x100) in both directions over `n` queries per direction."""

    m2t_acc: float
    m2t_recall: float
    t2m_acc: float
    t2m_recall: float
    n: int
    recall_k: int = 20

    def as_dict(self) -> dict[str, float | int]:
        k = self.recall_k
        return {
            "m2t_acc": self.m2t_acc,
            f"m2t_r@{k}": self.m2t_recall,
            "t2m_acc": self.t2m_acc,
            f"t2m_r@{k}": self.t2m_recall,
            "n": self.n,
        }


def _as_matrix(sim: Any) -> np.ndarray:
    if hasattr(sim, "detach"):  # a torch tensor (bf16 has no numpy dtype: go through float32)
        sim = sim.detach().float().cpu().numpy()
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ValueError(f"sim must be a non-empty square (N, N) matrix with pairs on the diagonal, got {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("sim holds NaN or infinite values")
    return sim


def _blocks(n: int, batch_size: int | None) -> list[tuple[int, int]]:
    if batch_size is None:
        return [(0, n)]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _ranks(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the true partners: molecule->text per row, text->molecule per column."""
    diag = np.diagonal(block)
    m2t = (block >= diag[:, None]).sum(1) - 1  # (n,)
    t2m = (block >= diag[None, :]).sum(0) - 1  # (n,)
    return m2t, t2m


def _scores(m2t: np.ndarray, t2m: np.ndarray, recall_k: int) -> RetrievalScores:
    return RetrievalScores(
        m2t_acc=100.0 * float(np.mean(m2t == 0)),
        m2t_recall=100.0 * float(np.mean(m2t < recall_k)),
        t2m_acc=100.0 * float(np.mean(t2m == 0)),
        t2m_recall=100.0 * float(np.mean(t2m < recall_k)),
        n=len(m2t),
        recall_k=recall_k,
    )


def retrieval_scores(sim: Any, *, batch_size: int | None = None, recall_k: int = 20) -> RetrievalScores:
    """Acc and R@`recall_k` from similarities (N, N); `batch_size` None = full test set, else in-batch."""
    sim = _as_matrix(sim)
    ranks = [_ranks(sim[s:e, s:e]) for s, e in _blocks(len(sim), batch_size)]
    return _scores(np.concatenate([r[0] for r in ranks]), np.concatenate([r[1] for r in ranks]), recall_k)


def _pair_scores(
    mols: np.ndarray, texts: np.ndarray, n: int, offset: int, match_score: MatchScore, pairs_per_call: int
) -> np.ndarray:
    """match_score of (mols[i], texts[i]) in block coordinates, calling it once per distinct pair."""
    unique, inverse = np.unique(mols * n + texts, return_inverse=True)
    out = np.empty(len(unique), dtype=np.float64)
    for start in range(0, len(unique), pairs_per_call):
        chunk = unique[start : start + pairs_per_call]
        scores = match_score(chunk // n + offset, chunk % n + offset)
        if hasattr(scores, "detach"):
            scores = scores.detach().float().cpu().numpy()
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(chunk):
            raise ValueError(f"match_score returned {len(scores)} scores for {len(chunk)} pairs")
        out[start : start + len(chunk)] = scores
    return out[inverse.reshape(-1)]


def _top_k(block: np.ndarray, k: int) -> np.ndarray:
    """(n, k) column indices of each row's k highest scores, best first."""
    return np.argsort(-block, axis=1, kind="stable")[:, :k]


def _rerank(candidates: np.ndarray, sims: np.ndarray, match: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Ranks of the true partners (query i's is candidate i) after re-scoring (n, k) candidates by sim + match.

    A partner outside the top k keeps its rank from `ranks` (>= k: all k candidates score >= it).
    """
    rows = np.arange(len(candidates))
    combined = np.asarray(sims, dtype=np.float64) + match  # (n, k)
    is_true = candidates == rows[:, None]  # (n, k)
    found = is_true.any(1)
    true_score = np.where(found, (combined * is_true).sum(1), np.inf)  # (n,)
    in_top = (combined >= true_score[:, None]).sum(1) - 1
    return np.where(found, in_top, ranks)


def _reranked_ranks(block: np.ndarray, candidates: np.ndarray, match: np.ndarray) -> np.ndarray:
    """Row-wise ranks of the true partners after re-scoring the (n, k) candidates by sim + match."""
    rows = np.arange(len(block))
    return _rerank(candidates, block[rows[:, None], candidates], match, _ranks(block)[0])


def reranked_retrieval_scores(
    sim: Any,
    match_score: MatchScore,
    *,
    top_k: int = 128,
    batch_size: int | None = None,
    recall_k: int = 20,
    pairs_per_call: int = 1024,
) -> RetrievalScores:
    """Acc and R@k after re-ranking each query's top-`top_k` candidates by `sim + match_score`.

    `match_score(mol_indices, text_indices)` gets global row/column indices of `sim` (int64 arrays of
    at most `pairs_per_call` pairs) and returns one score per pair (e.g. `MoLM3D.match_logits`).
    Each distinct pair is scored once, shared by both directions.
    """
    sim = _as_matrix(sim)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    m2t_ranks, t2m_ranks = [], []
    for s, e in _blocks(len(sim), batch_size):
        block = sim[s:e, s:e]
        n, k = e - s, min(top_k, e - s)
        # 1. candidates: texts per molecule (rows) and molecules per text (columns), (n, k) each
        m2t_cand, t2m_cand = _top_k(block, k), _top_k(block.T, k)
        # 2. one matching score per (molecule, text) pair, shared by both directions
        queries = np.repeat(np.arange(n), k)
        mols = np.concatenate([queries, t2m_cand.reshape(-1)])
        texts = np.concatenate([m2t_cand.reshape(-1), queries])
        match = _pair_scores(mols, texts, n, s, match_score, pairs_per_call).reshape(2, n, k)
        # 3. re-rank
        m2t_ranks.append(_reranked_ranks(block, m2t_cand, match[0]))
        t2m_ranks.append(_reranked_ranks(block.T, t2m_cand, match[1]))
    return _scores(np.concatenate(m2t_ranks), np.concatenate(t2m_ranks), recall_k)


def evaluate_retrieval(
    sim: Any,
    match_score: MatchScore | None = None,
    *,
    batch_size: int = 64,
    top_k: int = 128,
    recall_k: int = 20,
) -> dict[str, RetrievalScores]:
    """The reference's four retrieval settings (re-ranked ones only with a `match_score`)."""
    results = {
        "in_batch": retrieval_scores(sim, batch_size=batch_size, recall_k=recall_k),
        "full": retrieval_scores(sim, recall_k=recall_k),
    }
    if match_score is not None:
        results["in_batch_rerank"] = reranked_retrieval_scores(
            sim, match_score, top_k=top_k, batch_size=batch_size, recall_k=recall_k
        )
        results["full_rerank"] = reranked_retrieval_scores(sim, match_score, top_k=top_k, recall_k=recall_k)
    return results


def _hit_ranks(ids: np.ndarray, scores: np.ndarray, n_candidates: int) -> np.ndarray:
    """Ranks of the true partners (query i's is item i) from index hits (n, K), best first.

    As `_ranks`: the count of other candidates scoring >= the partner. A partner missing from the K hits,
    or tied with the last hit while more candidates exist, gets K: its rank is >= K - 1, which is all
    that Acc and R@k (k < K) need.
    """
    rows = np.arange(len(ids))
    is_true = ids == rows[:, None]
    found = is_true.any(1)
    true_score = np.where(found, np.where(is_true, scores, 0.0).sum(1), np.inf)  # (n,)
    ranks = (scores >= true_score[:, None]).sum(1) - 1
    more_ties = (ids.shape[1] < n_candidates) & (scores[:, -1] >= true_score)
    return np.where(found & ~more_ties, ranks, ids.shape[1])


def index_retrieval_scores(
    mol_embeds: Any,
    text_embeds: Any,
    match_score: MatchScore | None = None,
    *,
    top_k: int = 128,
    recall_k: int = 20,
    pairs_per_call: int = 1024,
) -> dict[str, RetrievalScores]:
    """Full-test-set Acc and R@k through exact retrieval indexes: "full" and, with `match_score`, "full_rerank".

    `mol_embeds` (N, Q, E) and `text_embeds` (N, E) are unit vectors, molecule i matching text i. Texts
    search a flat index of the molecules (max over query tokens) and molecules one of the texts; the
    re-ranked setting re-scores each query's top `top_k` hits by similarity + `match_score`, as
    `reranked_retrieval_scores` does on a similarity matrix (same numbers, up to float rounding of ties).
    """
    from ..retrieval import IndexConfig, VectorIndex

    mol, txt = _as_array(mol_embeds), _as_array(text_embeds)
    if mol.ndim != 3 or txt.ndim != 2 or len(mol) != len(txt) or mol.shape[-1] != txt.shape[-1] or not len(mol):
        raise ValueError(f"need mol_embeds (N, Q, E) and text_embeds (N, E), got {mol.shape} and {txt.shape}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    n, q, e = mol.shape
    ids = np.arange(n, dtype=np.int64)
    molecules = VectorIndex(IndexConfig(kind="flat", device="cpu"), e, q)
    molecules.add(ids, mol)
    texts = VectorIndex(IndexConfig(kind="flat", device="cpu"), e, 1)
    texts.add(ids, txt)
    hits = min(n, max(top_k, recall_k + 1))
    m2t_scores, m2t_ids = texts.search(mol, hits)  # (N, hits): texts per molecule
    t2m_scores, t2m_ids = molecules.search(txt, hits)  # (N, hits): molecules per text
    m2t, t2m = _hit_ranks(m2t_ids, m2t_scores, n), _hit_ranks(t2m_ids, t2m_scores, n)
    results = {"full": _scores(m2t, t2m, recall_k)}
    if match_score is not None:
        k = min(top_k, n)
        queries = np.repeat(ids, k)
        mols = np.concatenate([queries, t2m_ids[:, :k].reshape(-1)])
        texts_ = np.concatenate([m2t_ids[:, :k].reshape(-1), queries])
        match = _pair_scores(mols, texts_, n, 0, match_score, pairs_per_call).reshape(2, n, k)
        results["full_rerank"] = _scores(
            _rerank(m2t_ids[:, :k], m2t_scores[:, :k], match[0], m2t),
            _rerank(t2m_ids[:, :k], t2m_scores[:, :k], match[1], t2m),
            recall_k,
        )
    return results


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def evaluate_retrieval_embeddings(
    mol_embeds: Any,
    text_embeds: Any,
    match_score: MatchScore | None = None,
    *,
    batch_size: int = 64,
    top_k: int = 128,
    recall_k: int = 20,
) -> dict[str, RetrievalScores]:
    """The reference's four settings from embeddings (N, Q, E) and (N, E): in-batch on blocks of the
    similarity matrix, full test set through the retrieval index (`index_retrieval_scores`)."""
    mol, txt = _as_array(mol_embeds), _as_array(text_embeds)
    full = index_retrieval_scores(mol, txt, match_score, top_k=top_k, recall_k=recall_k)  # validates the shapes
    n, q, e = mol.shape
    sim = (mol.reshape(n * q, e) @ txt.T).reshape(n, q, -1).max(1)  # (N, N), as MoLM3D.similarity
    results = {"in_batch": retrieval_scores(sim, batch_size=batch_size, recall_k=recall_k), "full": full["full"]}
    if match_score is not None:
        results["in_batch_rerank"] = reranked_retrieval_scores(
            sim, match_score, top_k=top_k, batch_size=batch_size, recall_k=recall_k
        )
        results["full_rerank"] = full["full_rerank"]
    return results

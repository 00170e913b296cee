"""Queries against an index: a text finds molecules, a molecule (SMILES) finds texts.

    retriever = Retriever.open("lib.idx", checkpoint=None)
    hits = retriever.search(text="a primary alcohol", k=20, rerank=True)

The query is encoded by the model that built the index (its weights' fingerprint is checked) and the
index returns the top k by similarity (max over the molecule's query tokens). With `rerank`, the top
`rerank_top` candidates are re-scored by similarity + the Q-Former matching head's logit, as in the
reference (MolCA / 3D-MoLM), and the best k of them are returned. Molecule candidates are featurised
from the geometry stored at indexing time, so the matching head sees the conformer that was embedded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import CheckpointInfo, load_model
from ..chem import ConformerOptions, MoleculeFeatures, collate, featurize_atoms, parse_smiles
from ..models import MoLM3D
from ..pipeline import prepare_molecule
from .folder import Hit, RetrievalIndex
from .provenance import EmbeddingSource

DEFAULT_RERANK_TOP = 128  # candidates re-scored by the matching head (the reference's setting)


@dataclass
class RankedHit(Hit):
    """A hit with the parts of its score: `score` = `similarity` (+ `match_score` when re-ranked)."""

    similarity: float = 0.0
    match_score: float | None = None


@dataclass
class Retriever:
    """An index plus the model that encodes queries for it (the same checkpoint, checked)."""

    index: RetrievalIndex
    model: MoLM3D
    info: CheckpointInfo
    conformer_options: ConformerOptions = field(default_factory=ConformerOptions)
    pairs_per_call: int = 32  # matching-head batch when re-ranking

    def __post_init__(self) -> None:
        self.index.source.check_same(EmbeddingSource.of(self.model, self.info), "retrieve")

    @classmethod
    def open(cls, index: str | Path, checkpoint: str | Path | None = None, *, device: str = "auto",
             dtype: str = "auto", faiss_device: str | None = None) -> Retriever:  # fmt: skip
        """Load the index and the model (`checkpoint` None: the library default, see `load_model`)."""
        opened = RetrievalIndex.open(index, device=faiss_device)
        model, info = load_model(checkpoint, device=device, dtype=dtype, with_lm=False)
        return cls(opened, model, info)

    @torch.no_grad()
    def search(self, *, smiles: str | None = None, text: str | None = None, k: int = 20, rerank: bool = False,
               rerank_top: int = DEFAULT_RERANK_TOP) -> list[RankedHit]:  # fmt: skip
        """The best k hits for one query, best first: give `text` (molecule index) or `smiles` (text index)."""
        if (smiles is None) == (text is None):
            raise ValueError("give exactly one query: smiles= (finds texts) or text= (finds molecules)")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if text is not None and not text.strip():
            raise ValueError("the query text is empty")
        wanted = "texts" if smiles is not None else "molecules"
        if self.index.content != wanted:
            hint = "a text (description)" if self.index.content == "molecules" else "a molecule (SMILES)"
            raise ValueError(f"this index holds {self.index.content}: query it with {hint}")
        query_features: MoleculeFeatures | None = None
        if smiles is not None:
            prepared = prepare_molecule(parse_smiles(smiles, record_id="query"), self.conformer_options,
                                        self.model.config.max_atoms)  # fmt: skip
            query_features = prepared.features
            query = self.model.embed_molecules(collate([query_features])).float().cpu().numpy()  # (1, Q, E)
        else:
            query = self.model.embed_texts([text]).float().cpu().numpy()  # (1, E)
        n = max(k, rerank_top) if rerank else k
        hits = [RankedHit(**vars(h), similarity=h.score) for h in self.index.search(query, n)[0]]
        if not rerank or not hits:
            return hits[:k]
        match = self._match_scores(hits, query_features, text)
        for hit, m in zip(hits, match, strict=True):
            hit.match_score, hit.score = float(m), hit.similarity + float(m)
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def _match_scores(self, hits: list[RankedHit], query_features: MoleculeFeatures | None,
                      text: str | None) -> np.ndarray:  # fmt: skip
        """Matching-head logits of (molecule, text) for the query paired with each candidate."""
        if query_features is not None:  # molecule query, text candidates
            features = [query_features] * len(hits)
            texts = [h.record["text"] for h in hits]
        else:  # text query, molecule candidates featurised from their stored geometry
            stored = self.index.store.get([h.item_id for h in hits], geometry=True)
            max_atoms = self.model.config.max_atoms
            features = [featurize_atoms(stored[h.item_id].symbols, stored[h.item_id].coords, max_atoms=max_atoms)
                        for h in hits]  # fmt: skip
            texts = [text or ""] * len(hits)
        out = []
        for i in range(0, len(hits), self.pairs_per_call):
            batch = collate(features[i : i + self.pairs_per_call])
            out.append(self.model.match_logits(batch, texts[i : i + self.pairs_per_call]).float().cpu())
        return torch.cat(out).numpy()

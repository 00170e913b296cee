"""Which FAISS index holds the embeddings, with its build and search parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

KINDS = ("flat", "hnsw", "ivfpq")
DEVICES = ("auto", "cpu", "gpu")


class IndexConfigError(ValueError):
    """Parameters that cannot make an index (or too few vectors to train one)."""


@dataclass
class IndexConfig:
    """An inner-product index over unit vectors (so scores are cosine similarities).

    - "flat": exact, brute force; removal in place.
    - "hnsw": graph (IndexHNSWFlat); `hnsw_m` links per node, `ef_construction` and `ef_search` are the
      candidate-list sizes at build and query time (larger: higher recall, slower). HNSW cannot remove:
      removed items are marked deleted and filtered out of results, and the graph is rebuilt from the
      remaining vectors when deleted rows exceed `compact_fraction` of all rows (see VectorIndex).
    - "ivfpq": `nlist` k-means cells, vectors stored as `pq_m` codes of `nbits` bits, `nprobe` cells
      searched per query. Trained on the first `train_size` vectors added (default: as many as FAISS
      samples, 256 per centroid); `refine_factor` > 0 re-scores refine_factor x k candidates with the
      exact vectors (kept in memory beside the codes; removal then works by marking, as for HNSW).
    `device`: "auto" searches on a GPU when FAISS has GPU support and a CUDA device, "cpu" never,
    "gpu" insists (HNSW always runs on the CPU: FAISS has no GPU HNSW).
    """

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 1024
    pq_m: int = 32
    nbits: int = 8
    nprobe: int = 32
    refine_factor: int = 0
    train_size: int | None = None
    compact_fraction: float = 0.25
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise IndexConfigError(f"unknown index kind {self.kind!r}; choose one of {KINDS}")
        if self.device not in DEVICES:
            raise IndexConfigError(f"unknown device {self.device!r}; choose one of {DEVICES}")
        positive = ("hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "nbits", "nprobe")
        for name in positive:
            if getattr(self, name) < 1:
                raise IndexConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nbits > 16:
            raise IndexConfigError(f"nbits must be <= 16, got {self.nbits}")
        if self.refine_factor < 0:
            raise IndexConfigError(f"refine_factor must be >= 0, got {self.refine_factor}")
        if not 0.0 < self.compact_fraction <= 1.0:
            raise IndexConfigError(f"compact_fraction must be in (0, 1], got {self.compact_fraction}")

    @property
    def min_train_vectors(self) -> int:
        """Fewest vectors k-means can train IVF-PQ on: one per IVF cell and per PQ centroid."""
        return max(self.nlist, 2**self.nbits)

    @property
    def train_vectors(self) -> int:
        """Vectors buffered before IVF-PQ trains; FAISS itself samples at most 256 per centroid."""
        return self.train_size or 256 * self.min_train_vectors

    def check_dim(self, dim: int) -> None:
        if dim < 1:
            raise IndexConfigError(f"embedding dimension must be >= 1, got {dim}")
        if self.kind == "ivfpq" and dim % self.pq_m:
            raise IndexConfigError(f"ivfpq: pq_m={self.pq_m} must divide the embedding dimension {dim}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise IndexConfigError(f"unknown index parameters {sorted(unknown)}")
        return cls(**d)

"""Retrieval indexes: FAISS search of molecules by text and of texts by molecule.

    report = build_index("lib.idx", model, info, molecules="library.sdf", config=IndexConfig(kind="hnsw"))
    hits = Retriever.open("lib.idx").search(text="an aromatic amine", k=20, rerank=True)

`VectorIndex` is the in-memory FAISS layer (items of one or more vectors, max-over-vectors scores);
`RetrievalIndex` adds the records (sqlite), the manifest and versioned, atomically swapped folders.
"""

from .build import BuildReport, add_molecules, add_texts, build_index, remove_from_index, update_index
from .config import KINDS, IndexConfig, IndexConfigError
from .folder import Hit, IndexBusyError, RetrievalIndex
from .index import VectorIndex, gpu_available
from .manifest import Manifest, read_manifest
from .provenance import EmbeddingMismatchError, EmbeddingSource, weights_fingerprint
from .search import DEFAULT_RERANK_TOP, RankedHit, Retriever
from .sources import (
    LibraryMolecule,
    SkippedRecord,
    TextRecord,
    count_corpus,
    count_library,
    read_molecule_library,
    read_text_corpus,
)

__all__ = [
    "DEFAULT_RERANK_TOP",
    "KINDS",
    "BuildReport",
    "EmbeddingMismatchError",
    "EmbeddingSource",
    "Hit",
    "IndexBusyError",
    "IndexConfig",
    "IndexConfigError",
    "LibraryMolecule",
    "Manifest",
    "RankedHit",
    "RetrievalIndex",
    "Retriever",
    "SkippedRecord",
    "TextRecord",
    "VectorIndex",
    "add_molecules",
    "add_texts",
    "build_index",
    "count_corpus",
    "count_library",
    "gpu_available",
    "read_manifest",
    "read_molecule_library",
    "read_text_corpus",
    "remove_from_index",
    "update_index",
    "weights_fingerprint",
]

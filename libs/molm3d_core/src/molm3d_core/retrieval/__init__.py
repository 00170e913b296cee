"""Retrieval indexes: FAISS search of molecules by text and of texts by molecule.

    report = build_index("lib.idx", model, info, molecules="library.sdf", config=IndexConfig(kind="hnsw"))
    hits = Retriever.open("lib.idx").search(text="an aromatic amine", k=20, rerank=True)

`VectorIndex` is the in-memory FAISS layer (items of one or more vectors, max-over-vectors scores);
`RetrievalIndex` adds the records (sqlite), the manifest and versioned, atomically swapped folders.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exports resolve on first use, so that a reader of index folders (`folder`, `index`) never imports
# torch: the serving retrieval stage holds FAISS only.
_EXPORTS = {
    "build": ("BuildReport", "add_molecules", "add_texts", "build_index", "remove_from_index", "update_index"),
    "config": ("KINDS", "IndexConfig", "IndexConfigError"),
    "folder": ("Hit", "IndexBusyError", "RetrievalIndex"),
    "index": ("VectorIndex", "gpu_available"),
    "manifest": ("Manifest", "read_manifest"),
    "provenance": ("EmbeddingMismatchError", "EmbeddingSource", "weights_fingerprint"),
    "search": ("DEFAULT_RERANK_TOP", "RankedHit", "Retriever"),
    "sources": ("LibraryMolecule", "SkippedRecord", "TextRecord", "count_corpus", "count_library",
                "read_molecule_library", "read_text_corpus"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


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

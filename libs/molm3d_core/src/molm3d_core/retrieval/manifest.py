"""The manifest of an index version: what it holds, how it is indexed and which checkpoint made it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import IndexConfig
from .provenance import EmbeddingSource

FORMAT = "molm3d-index/1"
CONTENTS = ("molecules", "texts")
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
VERSIONS_DIR = "versions"
STAGING_PREFIX = ".staging-"


@dataclass
class Manifest:
    content: str  # "molecules" (text -> molecule search) or "texts" (molecule -> text search)
    config: IndexConfig
    embedding_dim: int
    vectors_per_item: int  # Q query tokens per molecule, 1 per text
    source: EmbeddingSource
    version: int = 0
    count: int = 0  # live items
    rows: int = 0  # FAISS rows, marked-deleted ones included
    deleted_rows: int = 0
    next_item_id: int = 0  # item ids are never reused (FAISS rows derive from them)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "content": self.content,
            "version": self.version,
            "created": self.created,
            "index": self.config.to_dict(),
            "embedding_dim": self.embedding_dim,
            "vectors_per_item": self.vectors_per_item,
            "count": self.count,
            "rows": self.rows,
            "deleted_rows": self.deleted_rows,
            "next_item_id": self.next_item_id,
            "checkpoint": self.source.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("format") != FORMAT:
            raise ValueError(f"unsupported index format {d.get('format')!r}, expected {FORMAT!r}")
        return cls(
            content=d["content"],
            config=IndexConfig.from_dict(d["index"]),
            embedding_dim=d["embedding_dim"],
            vectors_per_item=d["vectors_per_item"],
            source=EmbeddingSource.from_dict(d["checkpoint"]),
            version=d["version"],
            count=d["count"],
            rows=d["rows"],
            deleted_rows=d["deleted_rows"],
            next_item_id=d["next_item_id"],
            created=d["created"],
        )


def current_version(folder: str | Path) -> int:
    path = Path(folder) / CURRENT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a molm3d retrieval index (no {CURRENT_FILE})")
    return int(path.read_text().strip())


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of the live version of the index at `folder`."""
    version_dir = Path(folder) / VERSIONS_DIR / str(current_version(folder))
    return Manifest.from_dict(json.loads((version_dir / MANIFEST_FILE).read_text()))

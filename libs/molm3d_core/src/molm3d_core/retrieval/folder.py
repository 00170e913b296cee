"""A retrieval index on disk: versioned folders swapped in atomically, one writer at a time.

    DIR/CURRENT                 the live version number (replaced with os.replace)
    DIR/versions/<n>/           manifest.json, vectors.faiss, deleted.npy, records.sqlite
    DIR/versions/.staging-*/    a version being written (never read)
    DIR/.lock                   held (flock) by the one writer

A writer works on a staging copy of the current version and publishes it by renaming the folder to
`versions/<n+1>` and then replacing CURRENT, so a reader sees either the old or the new version, whole;
an interrupted build or update leaves the previous version live (its staging folder is removed by the
next writer). The previous live version is kept, so that a reader that has just read CURRENT can
still open the version it names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import IndexConfig
from .index import VectorIndex
from .manifest import (
    CONTENTS,
    CURRENT_FILE,
    LOCK_FILE,
    MANIFEST_FILE,
    STAGING_PREFIX,
    VERSIONS_DIR,
    Manifest,
    current_version,
)
from .provenance import EmbeddingSource
from .store import STORE_FILE, MetadataStore, StoredItem


class IndexBusyError(ValueError):
    """Another process is writing this index."""


@dataclass
class Hit:
    """One search result: the item's id, its score (higher is better) and its record fields."""

    id: str
    score: float
    record: dict[str, Any]
    item_id: int


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RetrievalIndex:
    """Items (molecules or texts) with their embeddings and records; see `open`, `create`, `edit`.

    Opened with `open` it is read-only. `create` (a new index, replacing any at the folder on commit)
    and `edit` (the current version) return a writer to use as a context manager: it commits on a
    clean exit and discards its work on an exception.
    """

    def __init__(self, manifest: Manifest, vectors: VectorIndex, store: MetadataStore, *, folder: Path | None,
                 staging: Path | None = None, lock: Any = None) -> None:  # fmt: skip
        self.manifest, self.vectors, self.store = manifest, vectors, store
        self.folder, self._staging, self._lock = folder, staging, lock
        self._changed = False  # an edit that changed nothing publishes no new version

    # -- opening ---------------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, *, device: str | None = None) -> RetrievalIndex:
        """The live version, read-only; `device` overrides the manifest's ("auto", "cpu", "gpu")."""
        folder = Path(folder)
        for attempt in range(3):
            version_dir = folder / VERSIONS_DIR / str(current_version(folder))
            try:
                manifest = Manifest.from_dict(json.loads((version_dir / MANIFEST_FILE).read_text()))
                if device is not None:
                    manifest.config.device = device
                vectors = VectorIndex.load(
                    version_dir, manifest.config, manifest.embedding_dim, manifest.vectors_per_item
                )
                store = MetadataStore(version_dir / STORE_FILE, readonly=True)
                return cls(manifest, vectors, store, folder=folder)
            except FileNotFoundError:
                # Two commits between reading CURRENT and opening pruned that version: read CURRENT again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _writer_lock(cls, folder: Path) -> Any:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held until commit/abort)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise IndexBusyError(f"{folder}: another process is writing this index; try again later") from None
        versions = folder / VERSIONS_DIR
        versions.mkdir(exist_ok=True)
        for stale in versions.glob(f"{STAGING_PREFIX}*"):  # left by an interrupted writer
            shutil.rmtree(stale, ignore_errors=True)
        return handle

    @classmethod
    def create(cls, folder: str | Path, content: str, config: IndexConfig, embedding_dim: int,
               vectors_per_item: int, source: EmbeddingSource) -> RetrievalIndex:  # fmt: skip
        """A writer for a new, empty index that replaces whatever is at `folder` when it commits."""
        if content not in CONTENTS:
            raise ValueError(f"content must be one of {CONTENTS}, got {content!r}")
        if content == "texts" and vectors_per_item != 1:
            raise ValueError("a text index has one vector per item")
        vectors = VectorIndex(config, embedding_dim, vectors_per_item)  # validates before taking the lock
        folder = Path(folder)
        lock = cls._writer_lock(folder)
        try:
            staging = folder / VERSIONS_DIR / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
            staging.mkdir()
            manifest = Manifest(content, config, embedding_dim, vectors_per_item, source)
            index = cls(manifest, vectors, MetadataStore(staging / STORE_FILE), folder=folder, staging=staging,
                        lock=lock)  # fmt: skip
            index._changed = True  # a new index, even an empty one, replaces the old
            return index
        except BaseException:
            lock.close()
            raise

    @classmethod
    def edit(cls, folder: str | Path, *, device: str | None = None) -> RetrievalIndex:
        """A writer on a copy of the live version (add, remove), published by `commit`."""
        folder = Path(folder)
        current_version(folder)  # a clear error before creating anything
        lock = cls._writer_lock(folder)
        try:
            live = cls.open(folder, device=device)
            staging = folder / VERSIONS_DIR / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
            staging.mkdir()
            store = live.store.copy_to(staging / STORE_FILE)
            live.store.close()
            return cls(live.manifest, live.vectors, store, folder=folder, staging=staging, lock=lock)
        except BaseException:
            lock.close()
            raise

    # -- reading ---------------------------------------------------------------------------------------

    @property
    def content(self) -> str:
        return self.manifest.content

    @property
    def source(self) -> EmbeddingSource:
        return self.manifest.source

    def __len__(self) -> int:
        return self.vectors.num_items

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k hits per query, best first; queries (B, E) or (B, P, E) unit vectors (see VectorIndex)."""
        scores, iids = self.vectors.search(queries, k)
        items = self.store.get(np.unique(iids[iids >= 0]).tolist())
        return [
            [Hit(items[i].id, float(s), items[i].record, int(i)) for s, i in zip(srow, irow, strict=True) if i >= 0]
            for srow, irow in zip(scores, iids, strict=True)
        ]

    def get(self, ids: list[str], *, geometry: bool = False) -> dict[str, StoredItem]:
        """Stored items by string id (absent ids left out); `geometry` adds the encoded atoms."""
        iids = self.store.existing(ids)
        return {item.id: item for item in self.store.get(list(iids.values()), geometry=geometry).values()}

    # -- writing ---------------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._staging is None:
            raise ValueError("this index was opened read-only: use RetrievalIndex.edit or create to change it")

    def existing_ids(self, ids: list[str]) -> set[str]:
        return set(self.store.existing(ids))

    def add(self, items: list[StoredItem], vectors: np.ndarray, source: EmbeddingSource) -> None:
        """Add items (their `iid` is assigned here) with vectors (N, V, E) made by the model `source`.

        Raises EmbeddingMismatchError for another checkpoint's vectors and ValueError for an id that is
        already in the index.
        """
        self._check_writable()
        self.source.check_same(source, "add")
        if len(items) != len(vectors):
            raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
        if not items:
            return
        taken = self.store.existing([item.id for item in items])
        if taken or len({item.id for item in items}) != len(items):
            raise ValueError(f"ids already in the index or repeated: {sorted(taken)[:5] or 'repeated in batch'}")
        start = self.manifest.next_item_id
        iids = np.arange(start, start + len(items), dtype=np.int64)
        for item, iid in zip(items, iids, strict=True):
            item.iid = int(iid)
        self.vectors.add(iids, vectors)
        self.store.add(items)
        self.manifest.next_item_id = start + len(items)
        self._changed = True

    def remove(self, ids: list[str]) -> list[str]:
        """Remove items by string id; returns the ids that were not in the index."""
        self._check_writable()
        found = self.store.existing(ids)
        self.vectors.remove(np.array(list(found.values()), dtype=np.int64))
        self.store.remove(list(found.values()))
        self._changed = self._changed or bool(found)
        return [i for i in ids if i not in found]

    def commit(self) -> int:
        """Write the staging version and make it the live one; returns the live version number (the
        current one, unchanged, when this writer changed nothing)."""
        self._check_writable()
        assert self.folder is not None and self._staging is not None
        if not self._changed:
            self.abort()
            return self.manifest.version
        try:
            return self._publish(self._staging, self.folder)
        except BaseException:
            self.abort()
            raise

    def _publish(self, staging: Path, folder: Path) -> int:
        if self.vectors.needs_compaction:
            self.vectors.compact()
        self.vectors.save(staging)
        self.store.commit()
        self.store.close()
        versions = folder / VERSIONS_DIR
        previous = current_version(folder) if (folder / CURRENT_FILE).exists() else 0
        existing = [int(p.name) for p in versions.iterdir() if p.name.isdigit()]
        version = max([previous, *existing]) + 1
        m = self.manifest
        m.version, m.created = version, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        m.count, m.rows, m.deleted_rows = self.vectors.num_items, self.vectors.num_rows, self.vectors.num_deleted_rows
        (staging / MANIFEST_FILE).write_text(json.dumps(m.to_dict(), indent=2) + "\n")
        for path in staging.iterdir():
            _fsync(path)
        # 1. the whole version folder appears at once, 2. CURRENT switches to it.
        os.rename(staging, versions / str(version))
        _fsync(versions)
        tmp = folder / f".{CURRENT_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(f"{version}\n")
        _fsync(tmp)
        os.replace(tmp, folder / CURRENT_FILE)
        _fsync(folder)
        # Keep the previous live version for readers that read CURRENT just before the switch; drop the
        # rest, including versions an interrupted commit wrote but never published.
        for old in existing:
            if old != previous:
                shutil.rmtree(versions / str(old), ignore_errors=True)
        self._staging = None
        self._release()
        self.store = MetadataStore(versions / str(version) / STORE_FILE, readonly=True)
        return version

    def abort(self) -> None:
        """Discard the staging version; the live one is untouched."""
        if self._staging is not None:
            self.store.close()
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def close(self) -> None:
        if self._staging is not None:
            self.abort()
        else:
            with contextlib.suppress(Exception):
                self.store.close()

    def __enter__(self) -> RetrievalIndex:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """A writer commits on a clean exit and discards its work on an exception; a reader closes."""
        if self._staging is not None and exc_type is None:
            self.commit()
        else:
            self.close()

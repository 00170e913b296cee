"""The records behind an index's item ids, in one sqlite file per index version.

Each item has its user-facing string id, an int64 item id (never reused: FAISS rows are derived from
it), its record fields as JSON (SMILES, InChIKey, name, text, ...) and, for molecules, the heavy-atom
geometry that was encoded, so that re-ranking featurises exactly the conformer behind the embedding.
A version's file is written once in a staging folder and only read afterwards (readers open it
immutable), so the writer can run without a journal.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

STORE_FILE = "records.sqlite"
_CHUNK = 900  # bound parameters per statement (old sqlite builds allow 999)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    iid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL,
    symbols TEXT,
    coords BLOB
)
"""


@dataclass
class StoredItem:
    iid: int
    id: str
    record: dict[str, Any]
    symbols: list[str] | None = None  # molecules: heavy atoms that were encoded
    coords: np.ndarray | None = None  # (N, 3) float32, Å

    def row(self) -> tuple[int, str, str, str | None, bytes | None]:
        coords = None if self.coords is None else np.asarray(self.coords, dtype=np.float32).tobytes()
        symbols = None if self.symbols is None else json.dumps(self.symbols)
        return self.iid, self.id, json.dumps(self.record, ensure_ascii=False), symbols, coords


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class MetadataStore:
    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path, self.readonly = Path(path), readonly
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no record store at {self.path}")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        else:
            self.conn = sqlite3.connect(self.path)
            # A staging copy: a crash discards the whole folder, so no journal is needed.
            self.conn.execute("PRAGMA journal_mode=OFF")
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.execute(_SCHEMA)

    def copy_to(self, path: str | Path) -> MetadataStore:
        """A writable copy at `path` (sqlite's online backup: consistent even while others read)."""
        target = sqlite3.connect(path)
        with target:
            self.conn.backup(target)
        target.close()
        return MetadataStore(path)

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def add(self, items: Iterable[StoredItem]) -> None:
        """Insert items; a string id already present raises sqlite3.IntegrityError (check `existing` first)."""
        self.conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", (item.row() for item in items))

    def existing(self, ids: Sequence[str]) -> dict[str, int]:
        """{string id: item id} of the given ids that are present."""
        found: dict[str, int] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(f"SELECT id, iid FROM items WHERE id IN ({marks})", chunk).fetchall())
        return found

    def get(self, iids: Sequence[int], *, geometry: bool = False) -> dict[int, StoredItem]:
        """Items by item id (absent ones are left out)."""
        columns = "iid, id, record, symbols, coords" if geometry else "iid, id, record, NULL, NULL"
        out: dict[int, StoredItem] = {}
        for chunk in _chunks([int(i) for i in iids]):
            marks = ",".join("?" * len(chunk))
            for iid, sid, record, symbols, coords in self.conn.execute(
                f"SELECT {columns} FROM items WHERE iid IN ({marks})", chunk
            ):
                xyz = None if coords is None else np.frombuffer(coords, dtype=np.float32).reshape(-1, 3)
                out[iid] = StoredItem(iid, sid, json.loads(record), json.loads(symbols) if symbols else None, xyz)
        return out

    def remove(self, iids: Sequence[int]) -> None:
        for chunk in _chunks([int(i) for i in iids]):
            self.conn.execute(f"DELETE FROM items WHERE iid IN ({','.join('?' * len(chunk))})", chunk)

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

"""Encode records in batches and add them to an index; bad records are reported and skipped.

    report = build_index("lib.idx", model, info, molecules="library.sdf", config=IndexConfig(kind="hnsw"))
    report = update_index("lib.idx", model, info, molecules="more.smi")

Molecules take the path of `molm3d embed` (conformer -> features -> `Predictor.run_batch`), so an index
vector is exactly what `embed` prints for that record; texts go through `MoLM3D.embed_texts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import CheckpointInfo
from ..chem import ConformerOptions
from ..errors import MoleculeError
from ..models import MoLM3D
from ..pipeline import Predictor, PreparedMolecule, prepare_molecule
from .config import IndexConfig
from .folder import RetrievalIndex
from .provenance import EmbeddingSource
from .sources import LibraryMolecule, SkippedRecord, TextRecord, read_molecule_library, read_text_corpus
from .store import StoredItem

OnSkip = Callable[[SkippedRecord], None]


@dataclass
class BuildReport:
    added: int = 0
    skipped: list[SkippedRecord] = field(default_factory=list)
    version: int | None = None  # the index version the records were committed in


class _Batcher:
    """Checks ids, collects a batch, encodes and adds it; shared by molecules and texts."""

    def __init__(self, index: RetrievalIndex, source: EmbeddingSource, report: BuildReport, progress: Any,
                 on_skip: OnSkip | None) -> None:  # fmt: skip
        self.index, self.source, self.report = index, source, report
        self.progress, self.on_skip = progress, on_skip
        self.seen: set[str] = set()

    def skip(self, skipped: SkippedRecord) -> None:
        self.report.skipped.append(skipped)
        if self.on_skip is not None:
            self.on_skip(skipped)
        self.tick(1)

    def tick(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(n)

    def claim(self, record_id: str) -> bool:
        """False (and the record reported) when the id is taken, in this run or in the index."""
        if record_id in self.seen or self.index.existing_ids([record_id]):
            self.skip(SkippedRecord(record_id, "duplicate_id", "this id is already in the index; skipped"))
            return False
        self.seen.add(record_id)
        return True

    def add(self, items: list[StoredItem], vectors: np.ndarray) -> None:
        self.index.add(items, vectors, self.source)
        self.report.added += len(items)
        self.tick(len(items))


@torch.no_grad()
def add_molecules(
    index: RetrievalIndex, model: MoLM3D, info: CheckpointInfo, items: Iterable[LibraryMolecule | SkippedRecord], *,
    batch_size: int = 32, conformer_options: ConformerOptions | None = None, progress: Any = None,
    on_skip: OnSkip | None = None,
) -> BuildReport:  # fmt: skip
    """Conformer, features and embedding (Q, E) of each molecule, added in batches of `batch_size`."""
    if index.content != "molecules":
        raise ValueError(f"this index holds {index.content}; add molecules to a molecule index")
    predictor = Predictor(model, info, conformer_options or ConformerOptions(), batch_size=batch_size)
    report = BuildReport()
    batcher = _Batcher(index, EmbeddingSource.of(model, info), report, progress, on_skip)
    batch: list[tuple[PreparedMolecule, dict[str, str]]] = []

    def flush() -> None:
        if not batch:
            return
        outputs = predictor.run_batch([p for p, _ in batch], "embed")
        vectors = np.asarray([o["embedding"] for o in outputs], dtype=np.float32)  # (B, Q, E)
        stored = []
        for prepared, fields in batch:
            symbols, coords = prepared.conformer.heavy_atoms()
            record = {"smiles": prepared.record.smiles, "inchikey": prepared.record.inchikey,
                      "source_format": prepared.record.source_format,
                      "conformer_method": prepared.conformer.method, **fields}  # fmt: skip
            stored.append(StoredItem(-1, prepared.record.record_id, record, symbols, coords))
        batcher.add(stored, vectors)
        batch.clear()

    for item in items:
        if isinstance(item, SkippedRecord):
            batcher.skip(item)
            continue
        if not batcher.claim(item.record.record_id):
            continue
        try:
            prepared = prepare_molecule(item.record, predictor.conformer_options, model.config.max_atoms)
        except MoleculeError as err:
            batcher.skip(SkippedRecord.from_error(err))
            continue
        batch.append((prepared, item.fields))
        if len(batch) >= batch_size:
            flush()
    flush()
    return report


@torch.no_grad()
def add_texts(
    index: RetrievalIndex, model: MoLM3D, info: CheckpointInfo, items: Iterable[TextRecord | SkippedRecord], *,
    batch_size: int = 64, progress: Any = None, on_skip: OnSkip | None = None,
) -> BuildReport:  # fmt: skip
    """Embedding (E,) of each text, added in batches of `batch_size`."""
    if index.content != "texts":
        raise ValueError(f"this index holds {index.content}; add texts to a text index")
    report = BuildReport()
    batcher = _Batcher(index, EmbeddingSource.of(model, info), report, progress, on_skip)
    batch: list[TextRecord] = []

    def flush() -> None:
        if not batch:
            return
        vectors = model.embed_texts([t.text for t in batch]).float().cpu().numpy()[:, None, :]  # (B, 1, E)
        batcher.add([StoredItem(-1, t.id, {"text": t.text, **t.fields}) for t in batch], vectors)
        batch.clear()

    for item in items:
        if isinstance(item, SkippedRecord):
            batcher.skip(item)
        elif batcher.claim(item.id):
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
    flush()
    return report


def _add_file(index: RetrievalIndex, model: MoLM3D, info: CheckpointInfo, molecules: str | Path | None,
              texts: str | Path | None, **options: Any) -> BuildReport:  # fmt: skip
    if (molecules is None) == (texts is None):
        raise ValueError("give exactly one of molecules= or texts=")
    if molecules is not None:
        return add_molecules(index, model, info, read_molecule_library(molecules), **options)
    options.pop("conformer_options", None)
    return add_texts(index, model, info, read_text_corpus(texts), **options)  # type: ignore[arg-type]


def build_index(
    output: str | Path, model: MoLM3D, info: CheckpointInfo, *, molecules: str | Path | None = None,
    texts: str | Path | None = None, config: IndexConfig | None = None, **options: Any,
) -> BuildReport:  # fmt: skip
    """A new index at `output` from one molecule library or text corpus; it replaces any index there only
    once complete (an error or interruption leaves the previous one live). `options`: batch_size,
    conformer_options (molecules), progress (a tqdm bar), on_skip (called per skipped record)."""
    content = "molecules" if molecules is not None else "texts"
    vectors_per_item = model.num_query_tokens if content == "molecules" else 1
    source = EmbeddingSource.of(model, info)
    with RetrievalIndex.create(output, content, config or IndexConfig(), model.config.embed_dim, vectors_per_item,
                               source) as index:  # fmt: skip
        report = _add_file(index, model, info, molecules, texts, **options)
        if not report.added:
            raise ValueError(f"no record could be indexed ({len(report.skipped)} skipped); nothing was written")
        report.version = index.commit()
    return report


def update_index(
    folder: str | Path, model: MoLM3D, info: CheckpointInfo, *, molecules: str | Path | None = None,
    texts: str | Path | None = None, **options: Any,
) -> BuildReport:  # fmt: skip
    """Add a file's records to the index at `folder` as a new version (same options as `build_index`)."""
    with RetrievalIndex.edit(folder) as index:
        index.source.check_same(EmbeddingSource.of(model, info), "add")
        report = _add_file(index, model, info, molecules, texts, **options)
        report.version = index.commit()
    return report


def remove_from_index(folder: str | Path, ids: list[str]) -> tuple[int, list[str]]:
    """Remove items by id as a new version; returns (version, ids that were not in the index)."""
    with RetrievalIndex.edit(folder) as index:
        missing = index.remove(ids)
        return index.commit(), missing

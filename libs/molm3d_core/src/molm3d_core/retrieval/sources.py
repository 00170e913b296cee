"""Records to index: molecule libraries (SMILES .smi/.csv, SDF, ...) and text corpora (JSON lines).

Readers are generators of records or `SkippedRecord`s: a bad record is reported with its reason and
reading goes on. Molecules go through the same parsers as `molm3d caption` (`chem.read_inputs`); a CSV
needs a `smiles` column, takes ids from an `id` column and keeps its other columns as record fields.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..chem import InputLimits, MoleculeRecord, count_records, parse_smiles, read_inputs
from ..errors import MoleculeError

# A library file is read whole by the shared parsers; allow far more than one request's 50 MB.
LIBRARY_LIMITS = InputLimits(max_input_bytes=4_000_000_000)


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out of an index, and why (`code` is an ErrorCode value or a text-corpus code)."""

    record_id: str | None
    code: str
    message: str

    @classmethod
    def from_error(cls, err: MoleculeError) -> SkippedRecord:
        return cls(err.record_id, err.code.value, err.message)

    def __str__(self) -> str:
        return f"{self.record_id or '?'}: {self.code}: {self.message}"


@dataclass
class LibraryMolecule:
    record: MoleculeRecord
    fields: dict[str, str] = field(default_factory=dict)  # extra CSV columns (name, source, ...)


@dataclass
class TextRecord:
    id: str
    text: str
    fields: dict[str, str] = field(default_factory=dict)  # the object's other string fields


def _csv_column(header: list[str], name: str) -> str | None:
    return next((h for h in header if h.strip().lower() == name), None)


def _read_csv(path: str, limits: InputLimits) -> Iterator[LibraryMolecule | SkippedRecord]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        smiles_col, id_col = _csv_column(header, "smiles"), _csv_column(header, "id")
        if smiles_col is None:
            raise ValueError(f"{path}: a molecule CSV needs a 'smiles' column (found {header})")
        for row in reader:
            line = reader.line_num
            record_id = (row.get(id_col) or "").strip() if id_col else ""
            record_id = record_id or f"{path}:{line}"
            fields = {k: v for k, v in row.items() if k not in (smiles_col, id_col) and k and isinstance(v, str) and v}
            try:
                yield LibraryMolecule(parse_smiles(row.get(smiles_col) or "", record_id=record_id, limits=limits),
                                      fields)  # fmt: skip
            except MoleculeError as err:
                yield SkippedRecord.from_error(err)


def read_molecule_library(
    path: str | Path, *, limits: InputLimits = LIBRARY_LIMITS
) -> Iterator[LibraryMolecule | SkippedRecord]:
    """Molecules of one file, in file order: .csv here, every other format through `chem.read_inputs`."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such molecule file: {path}")
    if path.lower().endswith(".csv"):
        yield from _read_csv(path, limits)
        return
    for item in read_inputs([path], limits=limits):
        yield SkippedRecord.from_error(item) if isinstance(item, MoleculeError) else LibraryMolecule(item)


def count_library(path: str | Path, *, limits: InputLimits = LIBRARY_LIMITS) -> int | None:
    """Records in a library file (a progress-bar total), without parsing molecules."""
    path = str(path)
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return max(0, sum(1 for _ in csv.reader(handle)) - 1)
    return count_records([path], limits=limits)


def read_text_corpus(path: str | Path) -> Iterator[TextRecord | SkippedRecord]:
    """JSON lines {"id": ..., "text": ..., other string fields...}; blank lines skipped."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such text corpus: {path}")
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield SkippedRecord(where, "invalid_json", f"not a JSON object: {err.msg}")
                continue
            if not isinstance(obj, dict):
                yield SkippedRecord(where, "invalid_json", "not a JSON object")
                continue
            record_id = obj.get("id")
            if not isinstance(record_id, str | int) or isinstance(record_id, bool) or str(record_id).strip() == "":
                yield SkippedRecord(where, "missing_field", "no 'id' (a string or an integer)")
                continue
            text = obj.get("text")
            if not isinstance(text, str) or not text.strip():
                yield SkippedRecord(str(record_id), "missing_field", "no 'text' (a non-empty string)")
                continue
            fields = {k: v for k, v in obj.items() if k not in ("id", "text") and isinstance(v, str)}
            yield TextRecord(str(record_id), text, fields)


def count_corpus(path: str | Path) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())

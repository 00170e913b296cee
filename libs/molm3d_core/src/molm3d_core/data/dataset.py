"""The on-disk layout of an instruction dataset, and its reader.

    DIR/card.json, DIR/README.md       dataset card (JSON, and the same as Markdown)
    DIR/molecules.jsonl                one molecule per line (see `MoleculeRow`)
    DIR/tasks/{train,valid,test}.jsonl one question-answer or caption example per line (see `TaskRow`)
    DIR/retrieval/test.jsonl           {"mol_id", "text"}: ChEBI test molecules and their captions

JSON lines are UTF-8 ("Å²" is written as is), one object per line, compact separators.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from molm3d_core.data.split import SPLITS

FORMAT_VERSION = 2  # 2: molecules carry "targets"
CARD_JSON = "card.json"
CARD_MARKDOWN = "README.md"
MOLECULES_FILE = "molecules.jsonl"
TASKS_DIR = "tasks"
RETRIEVAL_FILE = "retrieval/test.jsonl"
FORMAT_DESCRIPTION = """\
DIR/card.json, DIR/README.md            dataset card (JSON; the same as Markdown)
DIR/molecules.jsonl                     one line per molecule:
  {"mol_id": "qm9:000001" | "chebi:<InChIKey>", "source": "qm9" | "chebi", "split": "train" | "valid" | "test",
   "smiles": canonical RDKit SMILES, "name": ChEBI name | null, "scaffold": Murcko scaffold SMILES ("" if acyclic),
   "geometries": {"dft":   {"symbols": [heavy atoms], "coords": [[x, y, z], ...]},   QM9 only: the B3LYP geometry
                  "etkdg": {"symbols": [...], "coords": [...]}}}                    RDKit ETKDGv3+MMFF from the SMILES,
                                                                                   when it succeeded
   "targets": {name: value}}  regression targets of the encoder's property heads: RDKit mw/logp/tpsa/complexity
                              for every molecule, and QM9's DFT targets (data/qm9.py QM9_TARGETS) for QM9
  coordinates in Å with 3 decimals, heavy atoms only, in each geometry's own atom order (not the SMILES order)
DIR/tasks/{train,valid,test}.jsonl      one line per example, molecules in molecules.jsonl order:
  {"mol_id", "task": "homo" | "lumo" | "gap" | "energy" | "mw" | "logp" | "tpsa" | "complexity" | "caption" |
   "classes" | "identity" | "xtb_homo" | "xtb_lumo", "instruction": question text (caption: the caption
   instruction), "answer": target text, "label": number printed in the answer | null, "unit": "eV" | "g/mol" |
   "Å²" | null}
DIR/retrieval/test.jsonl                {"mol_id", "text"}: ChEBI test molecules and their captions
"""
TASKS = (
    "homo",
    "lumo",
    "gap",
    "energy",
    "mw",
    "logp",
    "tpsa",
    "complexity",
    "xtb_homo",
    "xtb_lumo",
    "caption",
    "classes",
    "identity",
)


class GeometryRow(TypedDict):
    symbols: list[str]  # heavy atoms only, in the geometry's own atom order (not the SMILES order)
    coords: list[list[float]]  # (N, 3) in Å, 3 decimals


class MoleculeRow(TypedDict):
    mol_id: str  # "qm9:000001" | "chebi:<InChIKey>"
    source: str  # "qm9" | "chebi"
    split: str  # "train" | "valid" | "test"
    smiles: str  # canonical RDKit SMILES
    name: str | None  # ChEBI name; None for QM9
    scaffold: str  # Bemis-Murcko scaffold SMILES, "" for acyclic molecules
    geometries: dict[str, GeometryRow]  # "dft" (QM9 only) and/or "etkdg" (when the conformer succeeded)
    targets: dict[str, float]  # property-head targets: RDKit descriptors; QM9's DFT targets (QM9_TARGETS)


class TaskRow(TypedDict):
    mol_id: str
    task: str  # one of TASKS
    instruction: str  # the question (for captions: the caption instruction)
    answer: str  # the target text
    label: float | None  # the number in a numeric answer, exactly as printed; None for text tasks
    unit: str | None  # "eV" | "g/mol" | "Å²" | None


def task_file(split: str) -> str:
    return f"{TASKS_DIR}/{split}.jsonl"


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON lines; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


@dataclass
class Dataset:
    """A dataset read back: molecules by id, task rows per split, retrieval pairs and the card."""

    root: Path
    card: dict[str, Any]
    molecules: dict[str, MoleculeRow]
    tasks: dict[str, list[TaskRow]] = field(default_factory=dict)  # split -> rows, file order
    retrieval: list[dict[str, str]] = field(default_factory=list)  # [{"mol_id", "text"}]

    def examples(self, split: str, task: str | None = None) -> list[tuple[MoleculeRow, TaskRow]]:
        """(molecule, example) pairs of a split, optionally of one task."""
        return [(self.molecules[t["mol_id"]], t) for t in self.tasks.get(split, []) if task in (None, t["task"])]


def load_dataset(root: str | Path, task_splits: tuple[str, ...] = SPLITS) -> Dataset:
    """Read a dataset folder written by `molm3d data build`; raises FileNotFoundError for a non-dataset.

    `task_splits` limits which task files are read (a full build holds over a million example rows).
    """
    root = Path(root)
    if not (root / MOLECULES_FILE).is_file():
        raise FileNotFoundError(f"{root}: not a molm3d dataset (no {MOLECULES_FILE})")
    card_path = root / CARD_JSON
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    molecules: dict[str, MoleculeRow] = {row["mol_id"]: row for row in read_jsonl(root / MOLECULES_FILE)}  # type: ignore[misc]
    tasks: dict[str, list[TaskRow]] = {}
    for split in task_splits:
        path = root / task_file(split)
        if path.is_file():
            tasks[split] = list(read_jsonl(path))  # type: ignore[arg-type]
    retrieval_path = root / RETRIEVAL_FILE
    retrieval = list(read_jsonl(retrieval_path)) if retrieval_path.is_file() else []
    return Dataset(root, card, molecules, tasks, retrieval)

"""`molm3d data build`: QM9 + ChEBI -> molecules, instruction examples, retrieval pairs and a card.

Steps: 1. read the sources, 2. compute per molecule (canonical SMILES, descriptors, scaffold, ETKDG
conformer, optional xTB) in a process pool, 3. scaffold-split each source, 4. write the examples,
5. pick the retrieval test pairs, 6. write the card. The build goes to a `.partial` folder next to the
output and is renamed into place at the end, so a failed build never leaves a half-written dataset.
Deterministic: the same options and package versions give byte-identical files (the card's "build"
section, with times and the worker count, aside).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from molm3d_core.data.card import make_card, render_markdown
from molm3d_core.data.chebi import ChebiClass, ChebiEntry, caption, classes_answer, identity_answer, read_c3p
from molm3d_core.data.compute import MoleculeJob, MoleculeResult, compute_all
from molm3d_core.data.dataset import (
    CARD_JSON,
    CARD_MARKDOWN,
    MOLECULES_FILE,
    RETRIEVAL_FILE,
    TASKS,
    MoleculeRow,
    TaskRow,
    task_file,
    write_jsonl,
)
from molm3d_core.data.properties import PROPERTY_SPECS, format_answer
from molm3d_core.data.qm9 import read_qm9
from molm3d_core.data.questions import choose_question, stable_hash
from molm3d_core.data.split import SPLITS, SplitFractions, scaffold_split
from molm3d_core.data.xtb import require_xtb

RETRIEVAL_SIZE = 2000  # the reference's retrieval test set


class BuildError(ValueError):
    """A build that cannot run as asked (existing output, too few retrieval pairs, missing tool)."""


@dataclass(frozen=True)
class BuildConfig:
    output: Path
    limit: int | None = None  # first N molecules of each source
    workers: int = 1
    seed: int = 42  # conformers, question choice, split shuffle, retrieval sample
    xtb: bool = False  # GFN2-xTB HOMO/LUMO for ChEBI molecules (needs tblite)
    # None: 2000, or as many as there are when fewer (the full build has 1,899 captioned ChEBI test
    # molecules); an explicit size must be met exactly. Known only after the hour of conformers.
    retrieval_size: int | None = None
    # Heavy-atom cap (default: the encoder's input limit). ETKDG takes seconds to a minute for the few
    # hundred ChEBI molecules above ~100 heavy atoms, which dominate the build time.
    max_heavy_atoms: int = 256
    qm9_fractions: SplitFractions = field(default_factory=lambda: SplitFractions(0.8, 0.1, 0.1))
    # Over captioned molecules: 30% of the ~6,900 captioned ChEBI molecules gives >= 2,000 test pairs.
    chebi_fractions: SplitFractions = field(default_factory=lambda: SplitFractions(0.6, 0.1, 0.3))
    overwrite: bool = False
    progress: bool = True


@dataclass
class _Molecule:
    row: MoleculeRow
    values: dict[str, float]  # numeric task -> value in the task's unit
    texts: dict[str, str]  # text task -> answer


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise BuildError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise BuildError(f"{output} exists and is not empty; use --overwrite to replace it")
        if not (output / CARD_JSON).is_file():
            raise BuildError(f"{output} is not a molm3d dataset (no {CARD_JSON}); refusing to overwrite it")


def _qm9_molecules(config: BuildConfig, stats: dict[str, Any]) -> list[_Molecule]:
    source = list(read_qm9(config.limit))
    jobs = [MoleculeJob(i, m.smiles, config.seed, max_heavy_atoms=config.max_heavy_atoms) for i, m in enumerate(source)]
    results = compute_all(jobs, workers=config.workers, desc="qm9", progress=config.progress)
    molecules = []
    for qm9, result in zip(source, results, strict=True):
        if result.error:
            stats["dropped"]["qm9"][result.error] += 1
            continue
        geometries = {"dft": {"symbols": list(qm9.symbols), "coords": [list(c) for c in qm9.coords]}}
        _note_conformer("qm9", result, geometries, stats)
        row = MoleculeRow(
            mol_id=qm9.mol_id,
            source="qm9",
            split="",
            smiles=result.smiles,
            name=None,
            scaffold=result.scaffold,
            geometries=geometries,
            targets=_rounded({**qm9.targets, **result.properties}),
        )
        values = {"homo": qm9.homo, "lumo": qm9.lumo, "gap": qm9.gap, "energy": qm9.energy, **result.properties}
        molecules.append(_Molecule(row, values, {}))
    stats["read"]["qm9"] = len(source)
    return molecules


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 5) for k, v in values.items()}


def _note_conformer(source: str, result: MoleculeResult, geometries: dict, stats: dict[str, Any]) -> None:
    if result.etkdg is None:
        stats["conformer_failures"][source] += 1
        stats["conformer_timeouts"][source] += result.timed_out
    else:
        geometries["etkdg"] = result.etkdg
        stats["conformer_methods"][source][result.conformer_method] += 1


def _chebi_texts(entry: ChebiEntry, classes: dict[str, ChebiClass]) -> dict[str, str]:
    texts = {"caption": caption(entry, classes), "classes": classes_answer(entry, classes)}
    texts["identity"] = identity_answer(entry, classes)
    return {task: text for task, text in texts.items() if text}


def _chebi_molecules(config: BuildConfig, stats: dict[str, Any]) -> list[_Molecule]:
    classes, entries = read_c3p()
    stats["read"]["chebi_classes"] = len(classes)
    stats["read"]["chebi_available"] = len(entries)
    entries = entries[: config.limit] if config.limit is not None else entries
    jobs = [
        MoleculeJob(i, e.smiles, config.seed, config.xtb, config.max_heavy_atoms, inchikey=True)
        for i, e in enumerate(entries)
    ]
    results = compute_all(jobs, workers=config.workers, desc="chebi", progress=config.progress)
    molecules, seen = [], set()
    for entry, result in zip(entries, results, strict=True):
        dropped = stats["dropped"]["chebi"]
        if result.error:
            dropped[result.error] += 1
            continue
        geometries: dict = {}
        _note_conformer("chebi", result, geometries, stats)
        if not geometries:
            dropped["conformer_failed"] += 1
            continue
        key = result.inchikey or "smiles-" + format(stable_hash(result.smiles), "016x")
        mol_id = f"chebi:{key}"
        if mol_id in seen:
            dropped["duplicate_structure"] += 1
            continue
        seen.add(mol_id)
        values = dict(result.properties)
        if config.xtb:
            if result.xtb is None:
                stats["xtb_failures"] += 1
            else:
                values.update(result.xtb)
        row = MoleculeRow(
            mol_id=mol_id,
            source="chebi",
            split="",
            smiles=result.smiles,
            name=entry.name,
            scaffold=result.scaffold,
            geometries=geometries,
            targets=_rounded(result.properties),
        )
        molecules.append(_Molecule(row, values, _chebi_texts(entry, classes)))
    stats["read"]["chebi"] = len(entries)
    return molecules


def _assign_splits(molecules: list[_Molecule], fractions: SplitFractions, seed: int, weighted: bool) -> None:
    """Scaffold split in place; `weighted` balances on captioned molecules (ChEBI retrieval pairs)."""
    weights = [1.0 if "caption" in m.texts else 0.0 for m in molecules] if weighted else None
    splits = scaffold_split([m.row["scaffold"] for m in molecules], fractions, seed, weights)
    for molecule, split in zip(molecules, splits, strict=True):
        molecule.row["split"] = split


def _examples(molecule: _Molecule, seed: int) -> list[TaskRow]:
    rows = []
    mol_id = molecule.row["mol_id"]
    for task in TASKS:
        if task in molecule.values:
            answer, label = format_answer(task, molecule.values[task])
            unit = PROPERTY_SPECS[task].unit
        elif task in molecule.texts:
            answer, label, unit = molecule.texts[task], None, None
        else:
            continue
        instruction = choose_question(task, mol_id, seed)
        rows.append(TaskRow(mol_id=mol_id, task=task, instruction=instruction, answer=answer, label=label, unit=unit))
    return rows


def _retrieval(molecules: list[_Molecule], config: BuildConfig) -> tuple[list[dict[str, str]], int]:
    """(pairs, available): a seeded sample of captioned ChEBI test molecules, in molecule order."""
    available = [
        m for m in molecules if m.row["source"] == "chebi" and m.row["split"] == "test" and "caption" in m.texts
    ]
    size = config.retrieval_size
    if size is None:
        size = min(RETRIEVAL_SIZE, len(available))
    if size > len(available):
        raise BuildError(
            f"the ChEBI test split has {len(available)} captioned molecules but {size} retrieval pairs were "
            "asked for: lower --retrieval-size or raise the ChEBI test fraction"
        )
    chosen = sorted(available, key=lambda m: (stable_hash(config.seed, m.row["mol_id"], "retrieval"), m.row["mol_id"]))
    keep = {m.row["mol_id"] for m in chosen[:size]}
    pairs = [{"mol_id": m.row["mol_id"], "text": m.texts["caption"]} for m in available if m.row["mol_id"] in keep]
    return pairs, len(available)


def _new_stats() -> dict[str, Any]:
    sources = ("qm9", "chebi")
    return {
        "read": {},
        "dropped": {s: Counter() for s in sources},
        "conformer_failures": dict.fromkeys(sources, 0),  # timeouts included
        "conformer_timeouts": dict.fromkeys(sources, 0),
        "conformer_methods": {s: Counter() for s in sources},
        "xtb_failures": 0,
    }


def build_dataset(config: BuildConfig) -> dict[str, Any]:
    """Build the dataset into `config.output`; returns the card. Raises BuildError for bad options."""
    started, clock = datetime.now(UTC), time.perf_counter()
    output = Path(config.output)
    _check_output(output, config.overwrite)
    if config.limit is not None and config.limit < 1:
        raise BuildError(f"--limit must be >= 1, got {config.limit}")
    if config.max_heavy_atoms < 1:
        raise BuildError(f"--max-heavy-atoms must be >= 1, got {config.max_heavy_atoms}")
    if config.xtb:
        try:
            require_xtb()
        except RuntimeError as exc:
            raise BuildError(str(exc)) from None
    stats = _new_stats()

    # 1-2. read and compute
    qm9 = _qm9_molecules(config, stats)
    chebi = _chebi_molecules(config, stats)
    # 3. split each source by scaffold
    _assign_splits(qm9, config.qm9_fractions, config.seed, weighted=False)
    _assign_splits(chebi, config.chebi_fractions, config.seed, weighted=True)
    molecules = [*qm9, *chebi]
    retrieval, available = _retrieval(molecules, config)

    # 4. write into a partial folder, renamed into place at the end
    partial = output.parent / f".{output.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_jsonl(partial / MOLECULES_FILE, (m.row for m in molecules))
    task_counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    for split in SPLITS:
        rows = [row for m in molecules if m.row["split"] == split for row in _examples(m, config.seed)]
        task_counts[split].update(row["task"] for row in rows)
        write_jsonl(partial / task_file(split), rows)
    # 5. retrieval pairs
    write_jsonl(partial / RETRIEVAL_FILE, retrieval)

    # 6. card
    files = [MOLECULES_FILE, *(task_file(s) for s in SPLITS), RETRIEVAL_FILE]
    sizes = {name: (partial / name).stat().st_size for name in files}
    options = {k: v for k, v in asdict(config).items() if k not in ("output", "overwrite", "progress", "workers")}
    options.update(qm9_fractions=config.qm9_fractions.as_tuple(), chebi_fractions=config.chebi_fractions.as_tuple())
    counts = {"retrieval": len(retrieval), "retrieval_available": available}
    card = make_card(options, stats, [m.row for m in molecules], task_counts, counts, sizes)
    card["build"] = {
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - clock, 1),
        "workers": config.workers,
    }
    (partial / CARD_JSON).write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (partial / CARD_MARKDOWN).write_text(render_markdown(card), encoding="utf-8")
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)
    return card

"""Training examples from a `molm3d data build` folder, sampled by step so runs resume exactly.

Batch `step` is drawn from an RNG seeded by (seed, stage, step, micro-batch): a resumed run sees the
same batches as an uninterrupted one without saving any sampler state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..chem import MoleculeFeatures
from ..data.dataset import load_dataset
from ..data.features import has_geometry, molecule_features


@dataclass
class TrainingData:
    molecules: dict[str, dict[str, Any]]  # mol_id -> molecules.jsonl record (of the split)
    examples: list[dict[str, Any]]  # tasks/{split}.jsonl records of the split

    @classmethod
    def load(
        cls, data_dir: str | Path, split: str = "train", max_molecules: int | None = None, examples: bool = True
    ) -> TrainingData:
        """`examples=False` skips the task rows (stage 0 reads molecules and their targets only)."""
        dataset = load_dataset(data_dir, task_splits=(split,) if examples else ())
        molecules = {k: m for k, m in dataset.molecules.items() if m["split"] == split}
        if max_molecules is not None:
            molecules = dict(sorted(molecules.items())[:max_molecules])
        rows = [e for e in dataset.tasks.get(split, []) if e["mol_id"] in molecules]
        return cls(molecules, rows)

    def features(self, mol_id: str, rng: np.random.Generator, etkdg_prob: float, max_atoms: int) -> MoleculeFeatures:
        """Features of one geometry: the DFT one or, with probability `etkdg_prob`, the generated one."""
        molecule = self.molecules[mol_id]
        use_etkdg = has_geometry(molecule, "etkdg") and (not has_geometry(molecule, "dft") or rng.random() < etkdg_prob)
        return molecule_features(molecule, "etkdg" if use_etkdg else "dft", max_atoms)

    def by_task(self, tasks: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in self.examples:
            if not tasks or e["task"] in tasks:
                groups[e["task"]].append(e)
        if not groups:
            raise ValueError(f"no training examples for tasks {tasks or 'any'}")
        return dict(sorted(groups.items()))

    def targets(self, mol_ids: list[str], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(N, T) target values in their units (NaN where absent) and the (N, T) presence mask."""
        values = np.full((len(mol_ids), len(names)), np.nan)
        for i, mol_id in enumerate(mol_ids):
            row = self.molecules[mol_id].get("targets") or {}
            for j, name in enumerate(names):
                if name in row:
                    values[i, j] = row[name]
        return values, ~np.isnan(values)


class TaskMixture:
    """Samples examples: a task with p ~ weight_task * N_task ** exponent, then examples of it uniformly.

    One task per micro-batch: batches pad to their longest sequence, and a caption (~150 tokens) in a
    batch of short property answers (~60) would more than double the cost of that batch.
    """

    def __init__(
        self, groups: dict[str, list[Any]], exponent: float, weights: Mapping[str, float] | None = None
    ) -> None:
        weights = weights or {}
        unknown = sorted(set(weights) - set(groups))
        if unknown:
            raise ValueError(f"weights for tasks without examples: {unknown} (have {sorted(groups)})")
        self.names = list(groups)
        self.groups = groups
        sizes = np.array([len(groups[n]) for n in self.names], dtype=np.float64)
        raw = sizes**exponent * np.array([weights.get(n, 1.0) for n in self.names])
        self.probs = raw / raw.sum()

    def pick(self, rng: np.random.Generator) -> str:
        return self.names[rng.choice(len(self.names), p=self.probs)]

    def sample(self, rng: np.random.Generator, n: int) -> list[Any]:
        group = self.groups[self.pick(rng)]
        return [group[i] for i in rng.integers(len(group), size=n)]


def molecules_by_source(data: TrainingData) -> TaskMixture:
    """Molecule ids grouped by source (qm9, chebi), a source drawn in proportion to its size: batches
    of one source pad to similar lengths (QM9 <= 9 heavy atoms, ChEBI up to the build's cap)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for mol_id, molecule in sorted(data.molecules.items()):
        groups[molecule["source"]].append(mol_id)
    if not groups:
        raise ValueError("no molecules in the training split")
    return TaskMixture(dict(sorted(groups.items())), exponent=1.0)


def step_rng(seed: int, stage: int, step: int, micro: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step, micro])

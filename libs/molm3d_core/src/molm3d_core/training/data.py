"""Training examples from a `molm3d data build` folder, sampled by step so runs resume exactly.

Batch `step` is drawn from an RNG seeded by (seed, stage, step, micro-batch): a resumed run sees the
same batches as an uninterrupted one without saving any sampler state.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..chem import MoleculeFeatures, featurize_atoms


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass
class TrainingData:
    molecules: dict[str, dict[str, Any]]  # mol_id -> molecules.jsonl record
    examples: list[dict[str, Any]]  # tasks/{split}.jsonl records of the split

    @classmethod
    def load(cls, data_dir: str | Path, split: str = "train", max_molecules: int | None = None) -> TrainingData:
        root = Path(data_dir)
        if not (root / "molecules.jsonl").exists():
            raise FileNotFoundError(f"{root} is not a molm3d dataset (no molecules.jsonl); run `molm3d data build`")
        molecules = {m["mol_id"]: m for m in read_jsonl(root / "molecules.jsonl") if m["split"] == split}
        if max_molecules is not None:
            molecules = dict(sorted(molecules.items())[:max_molecules])
        examples = [e for e in read_jsonl(root / "tasks" / f"{split}.jsonl") if e["mol_id"] in molecules]
        return cls(molecules, examples)

    def features(self, mol_id: str, rng: np.random.Generator, etkdg_prob: float, max_atoms: int) -> MoleculeFeatures:
        """Features of one geometry: the DFT one or, with probability `etkdg_prob`, the generated one."""
        geoms = self.molecules[mol_id]["geometries"]
        use_etkdg = "etkdg" in geoms and ("dft" not in geoms or rng.random() < etkdg_prob)
        g = geoms["etkdg" if use_etkdg else "dft"]
        return featurize_atoms(g["symbols"], np.asarray(g["coords"], dtype=np.float32), max_atoms=max_atoms)

    def by_task(self, tasks: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in self.examples:
            if not tasks or e["task"] in tasks:
                groups[e["task"]].append(e)
        if not groups:
            raise ValueError(f"no training examples for tasks {tasks or 'any'}")
        return dict(sorted(groups.items()))


class TaskMixture:
    """Samples examples: a task with p ~ N_task ** exponent, then an example of it uniformly (stage 3)."""

    def __init__(self, groups: dict[str, list[dict[str, Any]]], exponent: float) -> None:
        self.names = list(groups)
        self.groups = groups
        sizes = np.array([len(groups[n]) for n in self.names], dtype=np.float64)
        self.probs = sizes**exponent / (sizes**exponent).sum()

    def sample(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        tasks = rng.choice(len(self.names), size=n, p=self.probs)
        return [self.groups[self.names[t]][rng.integers(len(self.groups[self.names[t]]))] for t in tasks]


def step_rng(seed: int, stage: int, step: int, micro: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step, micro])

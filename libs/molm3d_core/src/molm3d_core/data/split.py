"""Bemis-Murcko scaffold split: molecules that share a scaffold always land in the same split.

Groups are ordered as chemprop's balanced scaffold split does: groups heavier than half the test
target first (largest first, to train), then the other groups in a seeded shuffle. The ordered groups
fill train, then valid, then test, up to the cumulative weight targets. Weights let a split be balanced
on what matters (e.g. captioned ChEBI molecules, so the test split holds enough retrieval pairs) while
unweighted molecules are spread along with their groups.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitFractions:
    """Target fractions of the total weight per split; they must sum to 1."""

    train: float
    valid: float
    test: float

    def __post_init__(self) -> None:
        values = (self.train, self.valid, self.test)
        if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {values}")

    @classmethod
    def parse(cls, text: str) -> SplitFractions:
        """From "0.8,0.1,0.1" (train, valid, test)."""
        parts = [p for p in text.split(",") if p.strip()]
        if len(parts) != 3:
            raise ValueError(f"expected three fractions train,valid,test, got {text!r}")
        return cls(*(float(p) for p in parts))

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.train, self.valid, self.test)


def murcko_scaffold(mol: Chem.Mol) -> str:
    """Canonical SMILES of the Bemis-Murcko scaffold without stereo; "" for an acyclic molecule."""
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def scaffold_split(
    scaffolds: Sequence[str],
    fractions: SplitFractions,
    seed: int,
    weights: Sequence[float] | None = None,
) -> list[str]:
    """The split ("train" | "valid" | "test") of each molecule, in input order.

    `scaffolds[i]` is molecule i's scaffold; `weights[i]` (default 1) is what the fractions count.
    When all weights are zero every molecule counts 1. Deterministic for the same inputs and seed.
    """
    if weights is None or not any(weights):
        weights = [1.0] * len(scaffolds)
    if len(weights) != len(scaffolds):
        raise ValueError(f"{len(weights)} weights for {len(scaffolds)} molecules")
    groups: dict[str, list[int]] = {}
    for i, scaffold in enumerate(scaffolds):
        groups.setdefault(scaffold, []).append(i)
    weight = {s: sum(weights[i] for i in members) for s, members in groups.items()}
    total = sum(weight.values())

    # 1. order the groups: big ones first (to train), the rest shuffled with the seed
    big_threshold = fractions.test * total / 2
    big = sorted((s for s in groups if weight[s] > big_threshold), key=lambda s: (-weight[s], s))
    small = sorted(s for s in groups if weight[s] <= big_threshold)
    random.Random(seed).shuffle(small)

    # 2. fill train, then valid, then test, each group whole
    train_end = fractions.train * total
    valid_end = (fractions.train + fractions.valid) * total
    result = [""] * len(scaffolds)
    filled = 0.0
    for scaffold in [*big, *small]:
        split = "train" if filled < train_end else "valid" if filled < valid_end else "test"
        for i in groups[scaffold]:
            result[i] = split
        filled += weight[scaffold]
    return result

"""Scaffold split: disjoint by scaffold, deterministic, close to the target fractions, weighted."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from rdkit import Chem

from molm3d_core.data import SplitFractions, murcko_scaffold, scaffold_split


def _scaffolds(n: int, groups: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"s{min(int(rng.paretovariate(1.2)), groups)}-{rng.randrange(groups)}" for _ in range(n)]


def test_murcko_scaffold() -> None:
    assert murcko_scaffold(Chem.MolFromSmiles("CCO")) == ""
    assert murcko_scaffold(Chem.MolFromSmiles("Cc1ccccc1CC(=O)O")) == "c1ccccc1"
    chiral, plain = Chem.MolFromSmiles("C[C@H](c1ccccc1)N1CCCC1"), Chem.MolFromSmiles("c1ccccc1CN1CCCC1")
    assert murcko_scaffold(chiral) == murcko_scaffold(plain) == Chem.MolToSmiles(plain)


def test_split_is_disjoint_by_scaffold_and_near_fractions() -> None:
    scaffolds = _scaffolds(5000, 400)
    splits = scaffold_split(scaffolds, SplitFractions(0.8, 0.1, 0.1), seed=1)
    owner: dict[str, str] = {}
    for scaffold, split in zip(scaffolds, splits, strict=True):
        assert owner.setdefault(scaffold, split) == split
    counts = Counter(splits)
    assert counts["train"] / 5000 == pytest.approx(0.8, abs=0.05)
    assert counts["test"] / 5000 == pytest.approx(0.1, abs=0.05)


def test_split_is_deterministic_and_seeded() -> None:
    scaffolds = _scaffolds(2000, 300)
    fractions = SplitFractions(0.8, 0.1, 0.1)
    assert scaffold_split(scaffolds, fractions, seed=3) == scaffold_split(scaffolds, fractions, seed=3)
    assert scaffold_split(scaffolds, fractions, seed=3) != scaffold_split(scaffolds, fractions, seed=4)


def test_largest_group_goes_to_train() -> None:
    scaffolds = ["big"] * 300 + [f"g{i}" for i in range(700)]
    splits = scaffold_split(scaffolds, SplitFractions(0.8, 0.1, 0.1), seed=0)
    assert set(splits[:300]) == {"train"}


def test_weights_balance_the_weighted_molecules() -> None:
    scaffolds = [f"g{i}" for i in range(3000)]
    weights = [1.0 if i % 3 == 0 else 0.0 for i in range(3000)]
    splits = scaffold_split(scaffolds, SplitFractions(0.6, 0.1, 0.3), seed=0, weights=weights)
    weighted_test = sum(1 for s, w in zip(splits, weights, strict=True) if w and s == "test")
    assert weighted_test == pytest.approx(300, abs=3)
    assert Counter(splits)["test"] == pytest.approx(900, rel=0.15)  # the others spread along


def test_fractions_validation() -> None:
    assert SplitFractions.parse("0.6,0.1,0.3").as_tuple() == (0.6, 0.1, 0.3)
    with pytest.raises(ValueError):
        SplitFractions(0.8, 0.1, 0.2)
    with pytest.raises(ValueError):
        SplitFractions.parse("0.9,0.1")

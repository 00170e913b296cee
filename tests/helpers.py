"""Test helpers shared across test modules."""

from __future__ import annotations


def molecule_batch(smiles: list[str], seed: int = 42):
    """Real RDKit conformers -> collated Uni-Mol features."""
    from molm3d_core.chem import ConformerOptions, collate, featurize, generate_conformer, parse_smiles

    conformers = [generate_conformer(parse_smiles(s), ConformerOptions(seed=seed)) for s in smiles]
    return collate([featurize(c) for c in conformers])

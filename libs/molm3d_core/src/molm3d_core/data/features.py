"""Uni-Mol features of a dataset molecule, from the geometry a run asks for."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..chem import MoleculeFeatures, featurize_atoms

Geometry = Literal["dft", "etkdg"]


def has_geometry(molecule: dict[str, Any], geometry: Geometry) -> bool:
    return geometry in molecule["geometries"]


def molecule_features(molecule: dict[str, Any], geometry: Geometry, max_atoms: int) -> MoleculeFeatures:
    """`dft` is QM9's B3LYP geometry; `etkdg` the RDKit conformer generated from the SMILES (the user path)."""
    g = molecule["geometries"].get(geometry)
    if g is None:
        raise KeyError(f"{molecule['mol_id']} has no {geometry} geometry (has {sorted(molecule['geometries'])})")
    return featurize_atoms(g["symbols"], np.asarray(g["coords"], dtype=np.float32), max_atoms=max_atoms)

"""Conformer generation: the reported fallback chain, determinism and energy-based selection."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers

from molm3d_core.chem import (
    ConformerOptions,
    generate_conformer,
    parse_smiles,
    parse_text,
)
from molm3d_core.chem.inputs import MoleculeRecord
from molm3d_core.errors import ErrorCode, MoleculeError

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
IBUPROFEN = "CC(C)Cc1ccc(cc1)C(C)C(=O)O"


def positions(mol: Chem.Mol) -> np.ndarray:
    return mol.GetConformer().GetPositions()


def sdf_record(smiles: str, *, hydrogens: bool = True) -> tuple[MoleculeRecord, Chem.Mol]:
    """A record read from a 3D SDF block, and the molecule the block was written from."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = 3
    assert rdDistGeom.EmbedMolecule(mol, params) == 0
    if not hydrogens:
        mol = Chem.RemoveHs(mol)
    mol.SetProp("_Name", "from-sdf")
    (record,) = parse_text(Chem.MolToMolBlock(mol), "sdf")
    assert isinstance(record, MoleculeRecord) and record.has_3d
    return record, mol


def test_aspirin_uses_etkdg_and_mmff() -> None:
    conf = generate_conformer(parse_smiles(ASPIRIN))
    assert conf.method == "etkdg_v3+mmff" and conf.warnings == []
    assert isinstance(conf.energy, float)
    assert conf.mol.GetNumConformers() == 1 and conf.mol.GetNumAtoms() == 21  # explicit hydrogens
    symbols, coords = conf.heavy_atoms()
    assert symbols == [a.GetSymbol() for a in Chem.MolFromSmiles(ASPIRIN).GetAtoms()]
    assert coords.dtype == np.float32 and coords.shape == (13, 3)
    assert np.ptp(coords, axis=0).min() > 0.5  # genuinely 3D, not a flat drawing
    # the reported energy is the MMFF energy of the returned coordinates
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(conf.mol)
    energy = rdForceFieldHelpers.MMFFGetMoleculeForceField(conf.mol, props).CalcEnergy()
    assert energy == pytest.approx(conf.energy, abs=1e-6)


def test_same_seed_gives_bit_identical_coordinates() -> None:
    record = parse_smiles(IBUPROFEN)
    options = ConformerOptions(n_conformers=3, seed=11)
    a = generate_conformer(record, options)
    b = generate_conformer(record, options)
    c = generate_conformer(record, ConformerOptions(n_conformers=3, seed=12))
    assert np.array_equal(positions(a.mol), positions(b.mol))
    assert not np.array_equal(positions(a.mol), positions(c.mol))
    assert record.mol.GetNumConformers() == 0  # the input record is left alone


def test_several_conformers_keep_the_lowest_energy() -> None:
    options = ConformerOptions(n_conformers=5, seed=7)
    # Reference: the same seeded embeddings, all optimised with MMFF, straight from RDKit.
    mol = Chem.AddHs(Chem.MolFromSmiles(IBUPROFEN))
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = options.seed
    ids = list(rdDistGeom.EmbedMultipleConfs(mol, options.n_conformers, params))
    energies = [e for _, e in rdForceFieldHelpers.MMFFOptimizeMoleculeConfs(mol, maxIters=options.max_ff_iters)]
    best = int(np.argmin(energies))
    assert best != 0 and max(energies) - min(energies) > 0.1  # otherwise the test could not tell

    conf = generate_conformer(parse_smiles(IBUPROFEN), options)
    assert conf.energy == pytest.approx(min(energies), abs=1e-6)
    np.testing.assert_array_equal(positions(conf.mol), mol.GetConformer(ids[best]).GetPositions())
    single = generate_conformer(parse_smiles(IBUPROFEN), ConformerOptions(n_conformers=1, seed=7))
    assert conf.energy <= single.energy


def test_input_3d_coordinates_are_kept() -> None:
    record, written = sdf_record(ASPIRIN)
    conf = generate_conformer(record)
    assert conf.method == "input_3d" and conf.energy is None
    np.testing.assert_allclose(positions(conf.mol), positions(written), atol=1e-4)

    regenerated = generate_conformer(record, ConformerOptions(use_input_3d=False))
    assert regenerated.method == "etkdg_v3+mmff"


def test_input_3d_without_hydrogens_gets_them_placed() -> None:
    record, written = sdf_record(ASPIRIN, hydrogens=False)
    conf = generate_conformer(record)
    assert conf.method == "input_3d" and conf.mol.GetNumAtoms() == 21
    _, heavy = conf.heavy_atoms()
    np.testing.assert_allclose(heavy, positions(written), atol=1e-4)


def test_plain_rdkit_molecules_are_accepted() -> None:
    record, _ = sdf_record("CCO")
    assert generate_conformer(Chem.Mol(record.mol)).method == "input_3d"
    assert generate_conformer(Chem.MolFromSmiles("CCO")).method == "etkdg_v3+mmff"


def test_mmff_gap_falls_back_to_uff_with_a_warning() -> None:
    conf = generate_conformer(parse_smiles("C[Hg]Cl"))  # methylmercury chloride: no MMFF94 types for Hg
    assert conf.method == "etkdg_v3+uff" and conf.energy is not None
    assert conf.warnings == ["MMFF94 parameters missing for Hg; used UFF"]


def test_no_force_field_leaves_an_unoptimised_conformer_with_a_warning() -> None:
    # Ebselen: RDKit has neither MMFF94 nor UFF parameters for its selenium.
    conf = generate_conformer(parse_smiles("O=C1N(c2ccccc2)[Se]c2ccccc21"))
    assert conf.method == "etkdg_v3" and conf.energy is None
    assert len(conf.warnings) == 1 and "Se" in conf.warnings[0] and "not force-field optimised" in conf.warnings[0]
    symbols, coords = conf.heavy_atoms()
    assert "Se" in symbols and np.ptp(coords, axis=0).min() > 0.5


def test_random_coordinate_embedding_is_reported() -> None:
    # A strained bicyclobutane stereoisomer that ETKDGv3 (seed 42) embeds only from random coordinates.
    conf = generate_conformer(parse_smiles("N[C@H]1[C@H]2C[C@@H]12"))
    assert conf.method == "etkdg_v3_random_coords+mmff"
    assert any("random coordinates" in w for w in conf.warnings)


def test_multi_fragment_molecules_embed() -> None:
    conf = generate_conformer(parse_smiles("CC(=O)[O-].[Na+]"), ConformerOptions(n_conformers=2))
    assert conf.method == "etkdg_v3+mmff"
    symbols, _ = conf.heavy_atoms()
    assert sorted(symbols) == ["C", "C", "Na", "O", "O"]


def test_impossible_geometry_raises_conformer_failed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A bicyclo[1.1.0]butane whose two bridgehead configurations no 3D geometry can satisfy.
    record = parse_smiles("C1[C@H]2C[C@H]12", record_id="impossible")
    with pytest.raises(MoleculeError) as err:
        generate_conformer(record)
    assert err.value.code == ErrorCode.CONFORMER_FAILED and err.value.record_id == "impossible"
    assert "etkdg_v3:" in err.value.message and "etkdg_v3_random_coords:" in err.value.message
    assert capfd.readouterr().err == ""  # RDKit's own complaints stay off stderr


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        generate_conformer(parse_smiles("CCO"), ConformerOptions(n_conformers=0))

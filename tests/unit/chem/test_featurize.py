"""Uni-Mol featurisation against hand computations, the atom cap, unknown elements and collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molm3d_core.chem import (
    ATOM_DICTIONARY,
    CLS,
    MASK,
    NUM_ATOM_TYPES,
    PAD,
    SEP,
    UNK,
    collate,
    featurize,
    featurize_atoms,
    generate_conformer,
    parse_smiles,
)
from molm3d_core.errors import ErrorCode, MoleculeError


def test_dictionary_matches_the_reference_order() -> None:
    reference = "[PAD] [CLS] [SEP] [UNK] C N O S H Cl F Br I Si P B Na K Al Ca Sn As Hg Fe Zn Cr Se Gd Au Li"
    assert list(ATOM_DICTIONARY) == [*reference.split(" "), "[MASK]"]
    assert (PAD, CLS, SEP, UNK, MASK, NUM_ATOM_TYPES) == (0, 1, 2, 3, 30, 31)


def test_tiny_molecule_by_hand() -> None:
    # O and C heavy atoms with two hydrogens that must be dropped before centring.
    symbols = ["O", "H", "H", "C"]
    coords = np.array([[0.0, 0.0, 0.0], [0.9, 0.1, 0.0], [-0.3, 0.9, 0.0], [1.0, 2.0, 2.0]])
    f = featurize_atoms(symbols, coords)

    o, c = ATOM_DICTIONARY.index("O"), ATOM_DICTIONARY.index("C")
    assert f.atom_tokens.dtype == np.int64
    np.testing.assert_array_equal(f.atom_tokens, [CLS, o, c, SEP])
    # mean of O and C is (0.5, 1, 1): O -> (-0.5, -1, -1), C -> (0.5, 1, 1); specials at the origin
    assert f.coordinates.dtype == np.float32
    np.testing.assert_array_equal(f.coordinates, [[0, 0, 0], [-0.5, -1, -1], [0.5, 1, 1], [0, 0, 0]])
    # |O - C| = 3, |origin - O| = |origin - C| = sqrt(0.25 + 1 + 1) = 1.5
    expected = np.array(
        [[0, 1.5, 1.5, 0], [1.5, 0, 3.0, 1.5], [1.5, 3.0, 0, 1.5], [0, 1.5, 1.5, 0]],
        dtype=np.float32,
    )
    assert f.distances.dtype == np.float32
    np.testing.assert_allclose(f.distances, expected, atol=1e-6)
    tokens = [CLS, o, c, SEP]
    assert f.edge_types.dtype == np.int64
    np.testing.assert_array_equal(f.edge_types, [[a * 31 + b for b in tokens] for a in tokens])
    assert f.edge_types[1, 2] == o * 31 + c and f.edge_types[2, 1] == c * 31 + o
    assert f.num_atoms == 2


def test_cap_keeps_exactly_max_atoms_in_order_deterministically() -> None:
    n = 300
    symbols = ["C", "H"] * n
    # x encodes the original heavy-atom index so the kept subset and its order can be read back
    coords = np.zeros((2 * n, 3))
    coords[0::2, 0] = np.arange(n)
    coords[1::2, 0] = np.arange(n) + 0.5  # hydrogens sit at half-integers: a survivor would show

    a = featurize_atoms(symbols, coords, max_atoms=256, seed=1)
    b = featurize_atoms(symbols, coords, max_atoms=256, seed=1)
    other = featurize_atoms(symbols, coords, max_atoms=256, seed=2)

    assert a.atom_tokens.shape == (258,) and a.num_atoms == 256
    assert set(a.atom_tokens[1:-1].tolist()) == {ATOM_DICTIONARY.index("C")}
    np.testing.assert_array_equal(a.coordinates, b.coordinates)
    assert not np.array_equal(a.coordinates, other.coordinates)
    heavy = a.coordinates[1:-1].astype(np.float64)
    np.testing.assert_allclose(heavy.mean(axis=0), 0.0, atol=1e-3)
    kept = heavy[:, 0] - heavy[:, 0].min()
    assert np.all(np.diff(kept) > 0)  # input order preserved
    # offsets between kept atoms are whole numbers: they are a subset of the original heavy atoms
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-3)


def test_no_cap_at_or_below_max_atoms() -> None:
    f = featurize_atoms(["C"] * 5, np.arange(15, dtype=float).reshape(5, 3), max_atoms=5)
    assert f.num_atoms == 5


def test_unknown_element_errors_or_maps_to_unk() -> None:
    coords = np.array([[0.0, 0, 0], [1.5, 0, 0]])
    with pytest.raises(MoleculeError) as err:
        featurize_atoms(["C", "Xe"], coords)
    assert err.value.code == ErrorCode.UNSUPPORTED_ELEMENT
    assert "Xe" in err.value.message

    f = featurize_atoms(["C", "Xe"], coords, unknown="unk")
    np.testing.assert_array_equal(f.atom_tokens, [CLS, ATOM_DICTIONARY.index("C"), UNK, SEP])


def test_special_symbols_are_not_elements() -> None:
    with pytest.raises(MoleculeError) as err:
        featurize_atoms(["C", "[MASK]"], np.zeros((2, 3)))
    assert err.value.code == ErrorCode.UNSUPPORTED_ELEMENT


def test_only_hydrogens_is_empty() -> None:
    with pytest.raises(MoleculeError) as err:
        featurize_atoms(["H", "H"], np.array([[0.0, 0, 0], [0.74, 0, 0]]))
    assert err.value.code == ErrorCode.EMPTY_MOLECULE


@pytest.mark.parametrize(
    "coords",
    [
        np.zeros((2, 3)),
        np.zeros((3, 2)),
        np.array([[0.0, 0, 0], [np.nan, 0, 0], [1, 1, 1]]),
    ],
)
def test_bad_coordinates_are_invalid_requests(coords: np.ndarray) -> None:
    with pytest.raises(MoleculeError) as err:
        featurize_atoms(["C", "O", "N"], coords)
    assert err.value.code == ErrorCode.INVALID_REQUEST


def test_collate_pads_with_zeros_and_masks_padding() -> None:
    long = featurize_atoms(["C", "O", "N"], np.array([[0.0, 0, 0], [1.2, 0, 0], [0, 1.3, 0]]))
    short = featurize_atoms(["S"], np.array([[3.0, 3.0, 3.0]]))
    batch = collate([long, short])

    assert batch["src_tokens"].dtype == torch.long and batch["src_tokens"].shape == (
        2,
        5,
    )
    assert batch["src_coord"].dtype == torch.float32 and batch["src_coord"].shape == (
        2,
        5,
        3,
    )
    assert batch["src_distance"].dtype == torch.float32 and batch["src_distance"].shape == (2, 5, 5)
    assert batch["src_edge_type"].dtype == torch.long and batch["src_edge_type"].shape == (2, 5, 5)
    assert batch["padding_mask"].dtype == torch.bool
    assert batch["padding_mask"].tolist() == [
        [False] * 5,
        [False, False, False, True, True],
    ]

    s = ATOM_DICTIONARY.index("S")
    assert batch["src_tokens"][1].tolist() == [CLS, s, SEP, PAD, PAD]
    np.testing.assert_array_equal(batch["src_distance"][0].numpy(), long.distances)
    np.testing.assert_array_equal(batch["src_edge_type"][0].numpy(), long.edge_types)
    assert torch.all(batch["src_distance"][1, 3:] == 0) and torch.all(batch["src_distance"][1, :, 3:] == 0)
    assert torch.all(batch["src_edge_type"][1, 3:] == 0) and torch.all(batch["src_edge_type"][1, :, 3:] == 0)
    assert torch.all(batch["src_coord"][1, 3:] == 0)
    np.testing.assert_array_equal(batch["src_coord"][1, :3].numpy(), short.coordinates)


def test_collate_rejects_an_empty_batch() -> None:
    with pytest.raises(ValueError):
        collate([])


def test_featurize_a_generated_conformer() -> None:
    conformer = generate_conformer(parse_smiles("CC(=O)Oc1ccccc1C(=O)O"))
    symbols, coords = conformer.heavy_atoms()
    f = featurize(conformer)

    assert f.num_atoms == 13
    expected = [CLS, *(ATOM_DICTIONARY.index(s) for s in symbols), SEP]
    np.testing.assert_array_equal(f.atom_tokens, expected)
    centred = coords - coords.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(f.coordinates[1:-1], centred, atol=1e-5)
    # the methyl C-C bond (atoms 0 and 1 in SMILES order) is about 1.5 Å
    assert 1.45 < f.distances[1, 2] < 1.55
    np.testing.assert_allclose(f.distances, f.distances.T)

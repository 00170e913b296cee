"""Molecules for viewers: 2D SVG depictions and XYZ text."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from rdkit import Chem

from molm3d_core.chem import ConformerOptions, generate_conformer, parse_smiles
from molm3d_core.chem.depict import depict_svg, xyz_block
from molm3d_core.chem.inputs import InputLimits
from molm3d_core.errors import ErrorCode, MoleculeError

URL = re.compile(r"https?://[^\s'\"<>)]*")


@pytest.mark.parametrize(
    "smiles", ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O", "[Na+].[Cl-]", "[U]"]
)
def test_depiction_is_a_self_contained_svg(smiles):
    svg = depict_svg(smiles, 300, 200)
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and svg.startswith("<svg")
    assert root.get("viewBox") == "0 0 300 200" and root.get("width") == "300px"
    assert set(URL.findall(svg)) == {"http://www.w3.org/2000/svg"}
    assert "<text" not in svg and "font-family" not in svg  # labels are paths: no font to fetch


def test_depiction_draws_the_canonical_smiles():
    assert depict_svg("OCC") == depict_svg("C(O)C") == depict_svg("CCO")
    assert depict_svg("CCO") != depict_svg("CCN")
    assert depict_svg("CCO", 240, 180) == depict_svg("CCO")  # the defaults


@pytest.mark.parametrize(
    "smiles, code",
    [
        ("C1CC", ErrorCode.INVALID_SMILES),
        ("", ErrorCode.INVALID_SMILES),
        ("C C", ErrorCode.INVALID_SMILES),
        ("c1cccc1", ErrorCode.SANITIZATION_FAILED),
        ("C" * 2001, ErrorCode.INPUT_TOO_LARGE),
        ("C" * 11, ErrorCode.TOO_MANY_ATOMS),
    ],
)
def test_what_cannot_be_drawn_is_a_typed_error(smiles, code):
    with pytest.raises(MoleculeError) as caught:
        depict_svg(smiles, limits=InputLimits(max_heavy_atoms=10))
    assert caught.value.code == code


@pytest.mark.parametrize("size", [(15, 100), (100, 2001), (0, 100), (-1, -1)])
def test_sizes_out_of_range_are_refused(size):
    with pytest.raises(ValueError, match="pixels"):
        depict_svg("CCO", *size)


def test_xyz_block_reads_back_as_the_same_atoms():
    conformer = generate_conformer(parse_smiles("CC(=O)Oc1ccccc1C(=O)O"), ConformerOptions())
    elements, coords = conformer.heavy_atoms()
    text = xyz_block(elements, coords.reshape(-1), comment="aspirin\nfrom ETKDG")
    lines = text.splitlines()
    assert lines[0] == "13" and lines[1] == "aspirin from ETKDG" and len(lines) == 15
    mol = Chem.MolFromXYZBlock(text)
    assert [a.GetSymbol() for a in mol.GetAtoms()] == elements
    assert np.abs(mol.GetConformer().GetPositions() - coords).max() < 1e-6
    assert xyz_block(elements, coords) == text.replace("aspirin from ETKDG", "")  # (N, 3) or flat


def test_xyz_block_refuses_coordinates_that_do_not_match():
    with pytest.raises(ValueError, match="2 atoms need 6 coordinates, got 5"):
        xyz_block(["C", "O"], [0.0] * 5)

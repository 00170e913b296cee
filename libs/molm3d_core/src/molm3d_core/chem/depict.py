"""Molecules for a viewer: a 2D drawing as SVG (RDKit), heavy atoms in 3D as XYZ text.

svg = depict_svg("CC(=O)Oc1ccccc1C(=O)O", 240, 180)   # "<svg ...>", self-contained
text = xyz_block(["C", "O"], [[0, 0, 0], [1.2, 0, 0]], comment="CO")

The SVG is the drawing of the canonical SMILES' molecule (so equivalent inputs give the same picture)
with RDKit's 2D coordinates. It is self-contained: atom labels are drawn as paths, and it names no URL
other than the SVG namespace (RDKit's own `rdkit` and `xlink` namespaces are removed, as is the XML
declaration), so a page can inline it on a machine without internet.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDepictor
from rdkit.Chem.Draw import rdMolDraw2D

from molm3d_core.chem.inputs import DEFAULT_LIMITS, InputLimits, _rdkit_parse, rdkit_log
from molm3d_core.errors import ErrorCode, MoleculeError

MIN_SIZE, MAX_SIZE = 16, 2_000  # pixels, each side
_XML_DECLARATION = re.compile(r"^<\?xml[^>]*\?>\s*")
_EXTRA_NAMESPACES = re.compile(r"\s+xmlns:(rdkit|xlink)='[^']*'")
_HEADER_COMMENT = re.compile(r"<!-- END OF HEADER -->\n?")


def depict_svg(smiles: str, width: int = 240, height: int = 180, *, limits: InputLimits = DEFAULT_LIMITS) -> str:
    """The 2D drawing of one SMILES as an SVG document of `width` x `height` pixels (with a viewBox, so
    it scales). MoleculeError: a SMILES RDKit cannot read (invalid_smiles, sanitization_failed), one
    over the limits' length or heavy-atom count, one without atoms; ValueError for a size outside
    MIN_SIZE..MAX_SIZE."""
    for name, value in (("width", width), ("height", height)):
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(f"{name} must be in {MIN_SIZE}..{MAX_SIZE} pixels, got {value}")
    smiles = smiles.strip()
    if not smiles:
        raise MoleculeError(ErrorCode.INVALID_SMILES, "SMILES is empty")
    if len(smiles) > limits.max_smiles_length:
        raise MoleculeError(
            ErrorCode.INPUT_TOO_LARGE, f"SMILES has {len(smiles)} characters; the limit is {limits.max_smiles_length}"
        )
    if any(c.isspace() for c in smiles):
        raise MoleculeError(ErrorCode.INVALID_SMILES, "SMILES contains whitespace")
    mol = _rdkit_parse(lambda s: Chem.MolFromSmiles(smiles, sanitize=s), ErrorCode.INVALID_SMILES, "SMILES")
    with rdkit_log():
        canonical = Chem.MolFromSmiles(Chem.MolToSmiles(Chem.RemoveHs(mol)))  # equivalent inputs, one drawing
    mol = canonical if canonical is not None else mol  # (a SMILES RDKit writes but cannot read back: as given)
    if mol.GetNumAtoms() == 0:
        raise MoleculeError(ErrorCode.EMPTY_MOLECULE, "molecule has no atoms to draw")
    heavy = sum(1 for a in mol.GetAtoms() if a.GetAtomicNum() != 1)
    if heavy > limits.max_heavy_atoms:
        raise MoleculeError(
            ErrorCode.TOO_MANY_ATOMS, f"molecule has {heavy} heavy atoms; the limit is {limits.max_heavy_atoms}"
        )
    with rdkit_log():
        rdDepictor.Compute2DCoords(mol)
        drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
        rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
        drawer.FinishDrawing()
    svg = drawer.GetDrawingText()
    svg = _XML_DECLARATION.sub("", svg, count=1)
    svg = _EXTRA_NAMESPACES.sub("", svg)
    return _HEADER_COMMENT.sub("", svg, count=1)


def xyz_block(elements: Sequence[str], coordinates: Sequence[float] | np.ndarray, comment: str = "") -> str:
    """XYZ text of atoms: the count, a comment line, then `element x y z` (Å, 6 decimals) per atom.

    `coordinates`: (N, 3) or N * 3 flat, row-major (as `Conformer.coordinates` on the wire). ValueError
    when they do not match the elements."""
    coords = np.asarray(coordinates, dtype=np.float64)
    if coords.size != 3 * len(elements):
        raise ValueError(f"{len(elements)} atoms need {3 * len(elements)} coordinates, got {coords.size}")
    coords = coords.reshape(len(elements), 3)
    comment = " ".join(comment.split())  # one line
    lines = [str(len(elements)), comment]
    lines += [f"{e:<2} {x:12.6f} {y:12.6f} {z:12.6f}" for e, (x, y, z) in zip(elements, coords, strict=True)]
    return "\n".join(lines) + "\n"

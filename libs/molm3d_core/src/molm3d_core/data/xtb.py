"""Optional GFN2-xTB frontier orbitals with tblite (`molm3d data build --xtb`).

xTB orbital energies are systematically shifted from B3LYP ones (a HOMO near -11 eV where DFT gives
-7 eV), so they are stored under their own task names ("xtb_homo", "xtb_lumo") and never mixed with
the QM9 DFT labels. tblite is imported only inside the worker that computes, never at module import.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import Descriptors

from molm3d_core.data.properties import HARTREE_TO_EV

XTB_PIN = "tblite==0.8.0"
BOHR_PER_ANGSTROM = 1.0 / 0.529177210903


@dataclass(frozen=True)
class XtbOrbitals:
    homo: float  # eV
    lumo: float  # eV


def xtb_available() -> bool:
    """True when tblite can be imported (checked without importing it)."""
    return importlib.util.find_spec("tblite") is not None


def require_xtb() -> None:
    """Raise a readable error when tblite is missing."""
    if not xtb_available():
        raise RuntimeError(f"--xtb needs the tblite package: pip install {XTB_PIN}")


def xtb_orbitals(mol: Chem.Mol) -> XtbOrbitals:
    """GFN2-xTB single point on `mol` (explicit hydrogens, one 3D conformer in Å).

    Charge is the formal charge, unpaired electrons the radical electrons. HOMO is the highest orbital
    with occupation above 0.5 (a singly occupied orbital counts), LUMO the lowest one below.
    Raises RuntimeError when the SCF fails.
    """
    from tblite.interface import Calculator

    numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    positions = mol.GetConformer().GetPositions() * BOHR_PER_ANGSTROM  # (N, 3) in Bohr
    calculator = Calculator(
        "GFN2-xTB",
        numbers,
        positions,
        charge=float(Chem.GetFormalCharge(mol)),
        uhf=int(Descriptors.NumRadicalElectrons(mol)),
    )
    calculator.set("verbosity", 0)
    result = calculator.singlepoint()
    energies = np.asarray(result.get("orbital-energies")).reshape(-1)  # Hartree, all spin channels
    occupations = np.asarray(result.get("orbital-occupations")).reshape(-1)
    occupied, virtual = energies[occupations > 0.5], energies[occupations <= 0.5]
    if not len(occupied) or not len(virtual):
        raise RuntimeError("no occupied or no virtual orbital")
    return XtbOrbitals(float(occupied.max()) * HARTREE_TO_EV, float(virtual.min()) * HARTREE_TO_EV)

"""The molecular properties the encoder's heads regress: name, unit, source, and how they are scaled.

One catalogue for the data build (which writes these values into `molecules.jsonl`), the training
objectives (which standardise them), the checkpoints (which record the names they were trained on)
and `molm3d predict` (which prints them with their units).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    unit: str | None  # None: dimensionless
    description: str
    source: str  # "qm9" (DFT, B3LYP/6-31G(2df,p)) or "rdkit" (2D descriptors, every molecule)
    # Heavy-tailed targets are regressed as log1p(value): QM9's rotational constants span 0-600,000 GHz.
    log: bool = False
    # Physically >= 0: a head's prediction is clamped at 0 (a hydrocarbon's TPSA is 0, and a regression
    # head otherwise answers -0.3 Å² for it).
    nonnegative: bool = False


_QM9 = "qm9"
_RDKIT = "rdkit"
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("homo", "eV", "HOMO energy (DFT)", _QM9),
        Target("lumo", "eV", "LUMO energy (DFT)", _QM9),
        Target("gap", "eV", "HOMO-LUMO gap (DFT)", _QM9, nonnegative=True),
        Target("dipole", "D", "dipole moment (DFT)", _QM9, nonnegative=True),
        Target("alpha", "bohr^3", "isotropic polarisability (DFT)", _QM9, nonnegative=True),
        Target("r2", "bohr^2", "electronic spatial extent (DFT)", _QM9, nonnegative=True),
        Target("zpve", "eV", "zero-point vibrational energy (DFT)", _QM9, nonnegative=True),
        Target("u0_atom", "eV", "atomisation energy at 0 K, from U0 (DFT)", _QM9),
        Target("u_atom", "eV", "atomisation energy at 298 K, from U (DFT)", _QM9),
        Target("h_atom", "eV", "atomisation enthalpy at 298 K, from H (DFT)", _QM9),
        Target("g_atom", "eV", "atomisation free energy at 298 K, from G (DFT)", _QM9),
        Target("cv", "cal/(mol K)", "heat capacity at 298 K (DFT)", _QM9, nonnegative=True),
        Target("rot_a", "GHz", "rotational constant A (DFT geometry)", _QM9, log=True, nonnegative=True),
        Target("rot_b", "GHz", "rotational constant B (DFT geometry)", _QM9, log=True, nonnegative=True),
        Target("rot_c", "GHz", "rotational constant C (DFT geometry)", _QM9, log=True, nonnegative=True),
        Target("mw", "g/mol", "molecular weight (RDKit MolWt)", _RDKIT, nonnegative=True),
        Target("logp", None, "octanol-water partition coefficient (RDKit Crippen)", _RDKIT),
        Target("tpsa", "Å²", "topological polar surface area (RDKit)", _RDKIT, nonnegative=True),
        Target("complexity", None, "Bertz complexity index (RDKit BertzCT)", _RDKIT, log=True, nonnegative=True),
    )
}
QM9_TARGETS = tuple(n for n, t in TARGETS.items() if t.source == _QM9)
DEFAULT_TARGETS = tuple(TARGETS)

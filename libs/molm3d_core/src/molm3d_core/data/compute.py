"""Per-molecule work of a dataset build (parse, descriptors, scaffold, conformer, optional xTB), in parallel.

`compute_molecule` is a pure function of its job, so results do not depend on the number of workers;
`compute_all` runs it in worker processes with a time limit per molecule (see `workers.guarded_map`) and
yields results in job order with a tqdm bar on stderr. A molecule whose conformer overruns its limit
keeps everything but the conformer (`timed_out`): the only machine-dependent outcome of a build, and
only for molecules on which ETKDG would otherwise run for minutes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from molm3d_core.chem import ConformerOptions, InputLimits, generate_conformer, parse_smiles
from molm3d_core.data.properties import rdkit_properties
from molm3d_core.data.split import murcko_scaffold
from molm3d_core.data.workers import guarded_map
from molm3d_core.errors import MoleculeError

Geometry = dict[str, list]  # {"symbols": [str, ...], "coords": [[x, y, z], ...]}: heavy atoms, Å, 3 decimals


@dataclass(frozen=True)
class MoleculeJob:
    key: int  # position of the molecule in its source list
    smiles: str
    seed: int  # conformer seed
    xtb: bool = False  # also compute GFN2-xTB orbitals on the conformer
    max_heavy_atoms: int = 256  # larger molecules are rejected (too_many_atoms) before any 3D work
    inchikey: bool = False  # compute the InChIKey (~4 ms a molecule: only where it names the molecule)
    conformer: bool = True  # False: everything but the 3D work (the fallback after a timeout)


@dataclass
class MoleculeResult:
    key: int
    error: str | None = None  # ErrorCode value when the SMILES was rejected; nothing else is set then
    smiles: str = ""  # canonical SMILES (RDKit, no explicit hydrogens)
    inchikey: str | None = None  # only when the job asked for it
    scaffold: str = ""  # Bemis-Murcko scaffold SMILES ("" for acyclic)
    properties: dict[str, float] = field(default_factory=dict)  # RDKit 2D descriptors, see rdkit_properties
    etkdg: Geometry | None = None  # ETKDGv3 (+MMFF) conformer from the SMILES; None when it failed
    conformer_method: str | None = None  # e.g. "etkdg_v3+mmff"
    conformer_error: str | None = None
    xtb: dict[str, float] | None = None  # {"xtb_homo": eV, "xtb_lumo": eV}
    xtb_error: str | None = None
    timed_out: bool = False  # the conformer (or xTB) overran its time limit and was abandoned


@dataclass(frozen=True)
class TimeLimit:
    """Seconds one molecule may take for its 3D work: base + per heavy atom (doubled with xTB).

    Generous: the slowest successful ChEBI embeddings took ~50 s for ~200 heavy atoms on one core.
    """

    base_s: float = 30.0
    per_heavy_atom_s: float = 0.5

    def seconds(self, job: MoleculeJob, heavy_atoms: float) -> float:
        return (self.base_s + self.per_heavy_atom_s * heavy_atoms) * (2 if job.xtb else 1)


def geometry(symbols: Sequence[str], coords: np.ndarray) -> Geometry:
    """The JSON form of a geometry: coordinates in Å rounded to 3 decimals."""
    return {"symbols": list(symbols), "coords": np.asarray(coords, dtype=np.float64).round(3).tolist()}


def compute_molecule(job: MoleculeJob, report: Callable[[float], None] | None = None) -> MoleculeResult:
    """Everything a build needs from one SMILES; failures are recorded, never raised.

    `report` is called with the heavy-atom count before the 3D work starts (it sets the time limit).
    """
    try:
        limits = InputLimits(max_heavy_atoms=job.max_heavy_atoms)
        record = parse_smiles(job.smiles, record_id=str(job.key), limits=limits)
    except MoleculeError as exc:
        return MoleculeResult(job.key, error=exc.code.value)
    result = MoleculeResult(
        job.key,
        smiles=record.smiles,
        inchikey=record.inchikey if job.inchikey else None,
        scaffold=murcko_scaffold(record.mol),
        properties=rdkit_properties(record.mol),
    )
    if not job.conformer:
        return result
    if report is not None:
        report(record.num_heavy_atoms)
    try:
        conformer = generate_conformer(record, ConformerOptions(seed=job.seed))
    except MoleculeError as exc:
        result.conformer_error = exc.message
        return result
    result.etkdg = geometry(*conformer.heavy_atoms())
    result.conformer_method = conformer.method
    if job.xtb:
        from molm3d_core.data.xtb import xtb_orbitals

        try:
            orbitals = xtb_orbitals(conformer.mol)
            result.xtb = {"xtb_homo": orbitals.homo, "xtb_lumo": orbitals.lumo}
        except Exception as exc:  # tblite raises plain exceptions for SCF and setup failures
            result.xtb_error = f"{type(exc).__name__}: {exc}"
    return result


def _after_timeout(job: MoleculeJob, reason: str) -> MoleculeResult:
    """The result of a molecule whose worker was killed: everything but the 3D work."""
    result = compute_molecule(replace(job, conformer=False))
    if result.error is None:
        result.conformer_error = reason
        result.timed_out = reason == "timed out"
    return result


def compute_all(
    jobs: Sequence[MoleculeJob],
    *,
    workers: int = 1,
    desc: str = "molecules",
    progress: bool = True,
    time_limit: TimeLimit = TimeLimit(),
) -> Iterator[MoleculeResult]:
    """`compute_molecule` over `jobs` in `workers` processes (at least one), results in job order."""
    with tqdm(total=len(jobs), desc=desc, unit="mol", file=sys.stderr, disable=not progress) as bar:
        results = guarded_map(
            compute_molecule, jobs, workers=workers, budget_s=time_limit.seconds, fallback=_after_timeout
        )
        for result in results:
            yield result
            bar.update()

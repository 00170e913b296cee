"""The guarded worker pool: results in job order, and a molecule on which ETKDG hangs cannot stop a build."""

from __future__ import annotations

import time

from molm3d_core.data.compute import MoleculeJob, TimeLimit, compute_all, compute_molecule

# ChEBI "GM 193663" (c3p): ETKDG runs for minutes on it and no Python signal interrupts RDKit.
HANGS_IN_ETKDG = (
    "CC(C)C1=C[C@@H]2C[C@]3(C=O)[C@@H]4CC[C@@H](C)[C@H]4C[C@@]2(CO[C@H]2C[C@@H]4OC(C)(C)O[C@@H]4"
    "[C@@H](C)O2)[C@]13C(O)=O"
)


def test_results_come_in_job_order_and_match_in_process_results() -> None:
    jobs = [MoleculeJob(i, smiles, seed=42) for i, smiles in enumerate(["CCO", "c1ccccc1", "C1CC1N", "O", "X"])]
    results = list(compute_all(jobs, workers=2, progress=False))
    assert [r.key for r in results] == [0, 1, 2, 3, 4]
    assert results[4].error == "invalid_smiles"
    assert [r.etkdg for r in results] == [compute_molecule(job).etkdg for job in jobs]


def test_a_hanging_conformer_times_out_and_keeps_the_rest() -> None:
    jobs = [MoleculeJob(0, "CCO", 42), MoleculeJob(1, HANGS_IN_ETKDG, 42), MoleculeJob(2, "CCN", 42)]
    started = time.monotonic()
    results = list(compute_all(jobs, workers=1, progress=False, time_limit=TimeLimit(3.0, 0.0)))
    assert time.monotonic() - started < 30
    stuck = results[1]
    assert stuck.timed_out and stuck.etkdg is None and stuck.conformer_error == "timed out"
    assert stuck.smiles and stuck.properties["mw"] > 0  # everything but the 3D work
    assert results[0].etkdg and results[2].etkdg  # the replacement worker carried on

"""Conformers/s per core: molm3d_core.chem.generate_conformer vs plain RDKit, on the same molecules.

    ours:   generate_conformer(parse_smiles(s), ConformerOptions(seed=42))
    plain:  Chem.MolFromSmiles -> Chem.AddHs -> AllChem.EmbedMolecule(mol, ETKDGv3 with randomSeed=42)
            -> AllChem.MMFFOptimizeMolecule(mol)                       (RDKit defaults: maxIters=200)

Both run in this one process on one thread, interleaved molecule by molecule (which goes first
alternates), SMILES parsing included. The ratio is ours / plain in conformers/s: 1.0 means no
overhead. Ours optimises up to ConformerOptions.max_ff_iters (500) MMFF iterations where plain RDKit
stops at 200, so a third variant, plain RDKit with maxIters=500, separates the wrapper's own overhead
from that extra work; its coordinates are compared with ours (same seed, same work: they should agree).

    .venv/bin/python bench/conformers.py [--repeats 2] [--n-molecules N]

Writes bench/results/conformers.json and prints a summary.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from benchlib import DEFAULT_SMILES, busy_warning, machine_info, now_iso, read_smiles_file, write_results
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

from molm3d_core.chem import ConformerOptions, generate_conformer, parse_smiles
from molm3d_core.errors import MoleculeError

OURS, PLAIN, PLAIN_500 = "molm3d", "rdkit_plain", "rdkit_plain_maxiters500"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smiles", default=str(DEFAULT_SMILES), help="'SMILES name' file of molecules")
    p.add_argument("--n-molecules", type=int, default=None, help="first N molecules of the file (default: all)")
    p.add_argument("--repeats", type=int, default=2, help="passes over the molecules; per-molecule times are summed")
    p.add_argument("--seed", type=int, default=42, help="ETKDG random seed for both")
    p.add_argument("--no-equal-work", action="store_true", help="skip the plain RDKit maxIters=500 variant")
    p.add_argument("--output", default=None, help="results JSON (default bench/results/conformers.json)")
    return p.parse_args(argv)


def run_ours(smiles: str, seed: int) -> tuple[Chem.Mol | None, str]:
    """(molecule with one conformer or None, outcome)."""
    try:
        conformer = generate_conformer(parse_smiles(smiles), ConformerOptions(seed=seed))
    except MoleculeError as err:
        return None, f"failed: {err.code.value}"
    converged = not any("did not converge" in w for w in conformer.warnings)
    return conformer.mol, conformer.method + ("" if converged else " (not converged)")


def make_plain(max_iters: int | None) -> Callable[[str, int], tuple[Chem.Mol | None, str]]:
    def run_plain(smiles: str, seed: int) -> tuple[Chem.Mol | None, str]:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            return None, "failed: parse"
        mol = Chem.AddHs(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = seed
        if AllChem.EmbedMolecule(mol, params) != 0:
            return None, "failed: embed"
        kwargs = {} if max_iters is None else {"maxIters": max_iters}
        status = AllChem.MMFFOptimizeMolecule(mol, **kwargs)
        outcome = {0: "etkdg_v3+mmff", 1: "etkdg_v3+mmff (not converged)"}.get(status, "etkdg_v3 (mmff setup failed)")
        return mol, outcome

    return run_plain


def summarise(times: list[float], outcomes: list[str], repeats: int) -> dict[str, Any]:
    total = sum(times)
    attempts = len(outcomes) * repeats
    return {
        "attempts": attempts,
        "seconds": round(total, 4),
        "conformers_per_s": round(attempts / total, 3),
        "ms_per_molecule_median": round(1000 * statistics.median(times) / repeats, 3),
        "failures": sum(o.startswith("failed") for o in outcomes),
        "not_converged": sum("not converged" in o for o in outcomes),
        "outcomes": dict(Counter(outcomes)),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warning = busy_warning()
    machine = machine_info()
    # RDKit warnings would otherwise flood stderr from the plain variants (ours captures its own).
    rdBase.DisableLog("rdApp.*")
    entries = read_smiles_file(args.smiles)[: args.n_molecules]
    variants: dict[str, Callable[[str, int], tuple[Chem.Mol | None, str]]] = {
        OURS: run_ours,
        PLAIN: make_plain(None),
    }
    if not args.no_equal_work:
        variants[PLAIN_500] = make_plain(500)
    names = list(variants)

    # Warm-up: imports, RDKit parameter tables, first-call costs.
    for fn in variants.values():
        fn("CC(=O)Oc1ccccc1C(=O)O", args.seed)

    n = len(entries)
    times = {v: [0.0] * n for v in names}
    cpu_total = dict.fromkeys(names, 0.0)
    outcomes: dict[str, list[str]] = {v: [""] * n for v in names}
    coord_diff: list[float | None] = [None] * n
    print(f"{n} molecules x {args.repeats} passes x {len(names)} variants, one thread ...", flush=True)
    for r in range(args.repeats):
        for i, (smiles, _name) in enumerate(entries):
            # Rotate which variant goes first so neither profits systematically from warm caches.
            shift = (i + r) % len(names)
            mols: dict[str, Chem.Mol | None] = {}
            for v in names[shift:] + names[:shift]:
                c0, t0 = time.process_time(), time.perf_counter()
                mols[v], outcome = variants[v](smiles, args.seed)
                times[v][i] += time.perf_counter() - t0
                cpu_total[v] += time.process_time() - c0
                outcomes[v][i] = outcome
            if r == 0 and PLAIN_500 in mols and mols[OURS] is not None and mols[PLAIN_500] is not None:
                a, b = mols[OURS].GetConformer().GetPositions(), mols[PLAIN_500].GetConformer().GetPositions()
                coord_diff[i] = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
        done = {v: f"{n * (r + 1) / sum(times[v]):.2f}" for v in names}
        print(f"  pass {r + 1}/{args.repeats}: conformers/s so far {done}", flush=True)

    results: dict[str, Any] = {v: summarise(times[v], outcomes[v], args.repeats) for v in names}
    for v in names:
        results[v]["cpu_seconds"] = round(cpu_total[v], 4)
        results[v]["cpu_over_wall"] = round(cpu_total[v] / sum(times[v]), 3)
    ratio = round(results[OURS]["conformers_per_s"] / results[PLAIN]["conformers_per_s"], 3)
    results["ratio_ours_over_plain"] = ratio
    if PLAIN_500 in results:
        results["ratio_ours_over_plain_maxiters500"] = round(
            results[OURS]["conformers_per_s"] / results[PLAIN_500]["conformers_per_s"], 3
        )
        compared = [d for d in coord_diff if d is not None]
        results["coordinates_vs_plain_maxiters500"] = {
            "compared": len(compared),
            "identical_within_1e-6_A": sum(d <= 1e-6 for d in compared),
            "max_abs_diff_A": round(max(compared), 6) if compared else None,
            # Expected differences: molecules where ours took another path (e.g. UFF where MMFF lacks parameters).
            "differing": [
                {"name": entries[i][1], "ours": outcomes[OURS][i], "plain": outcomes[PLAIN_500][i]}
                for i, d in enumerate(coord_diff)
                if d is not None and d > 1e-6
            ],
        }
    per_molecule = [
        {
            "name": name,
            "heavy_atoms": Chem.MolFromSmiles(smiles).GetNumHeavyAtoms(),
            **{f"{v}_ms": round(1000 * times[v][i] / args.repeats, 3) for v in names},
            **{f"{v}_outcome": outcomes[v][i] for v in names},
        }
        for i, (smiles, name) in enumerate(entries)
    ]
    payload = {
        "benchmark": "conformers",
        "description": "SMILES -> one MMFF-optimised ETKDGv3 conformer per molecule, single process, single "
        "thread, interleaved per molecule; conformers/s = attempts / summed wall time (failures included)",
        "date": now_iso(),
        "machine": {**machine, "load_average_at_end": machine_info()["load_average_1_5_15min"]},
        "parameters": {
            "smiles_file": args.smiles,
            "n_molecules": n,
            "repeats": args.repeats,
            "seed": args.seed,
            "ours": "generate_conformer(parse_smiles(s), ConformerOptions(seed=seed)) "
            f"[n_conformers=1, max_ff_iters={ConformerOptions().max_ff_iters}, num_threads=1]",
            "plain": "MolFromSmiles, AddHs, EmbedMolecule(mol, ETKDGv3(randomSeed=seed)), MMFFOptimizeMolecule(mol)",
            "plain_maxiters500": "plain with MMFFOptimizeMolecule(mol, maxIters=500)",
            "rdkit_logging": "rdApp.* disabled globally for the run",
        },
        "warnings": [warning] if warning else [],
        "results": results,
        "per_molecule": per_molecule,
    }
    path = write_results("conformers", payload, args.output)

    print()
    print(f"Conformers/s on one core, {n} molecules x {args.repeats} passes ({path})")
    print(f"{'variant':26s} {'conf/s':>8s} {'failures':>9s} {'not conv.':>10s}")
    for v in names:
        r = results[v]
        print(f"{v:26s} {r['conformers_per_s']:8.2f} {r['failures']:9d} {r['not_converged']:10d}")
    print(f"ratio ours / plain RDKit: {ratio:.3f}")
    if PLAIN_500 in results:
        c = results["coordinates_vs_plain_maxiters500"]
        print(
            f"ratio ours / plain RDKit maxIters=500: {results['ratio_ours_over_plain_maxiters500']:.3f} "
            f"(coordinates identical for {c['identical_within_1e-6_A']}/{c['compared']})"
        )
        for d in c["differing"]:
            print(f"  coordinates differ for {d['name']}: ours {d['ours']!r}, plain {d['plain']!r}")
    if warning:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

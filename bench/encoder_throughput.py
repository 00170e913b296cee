"""Encoder molecules/s at batch 1 vs batch 64 on CPU.

The encoder stage is what turns featurised molecules into the LM's `<mol>` tokens: Uni-Mol 3D encoder
+ Q-Former + projector, i.e. `model.molecule_tokens(collate(features))` of the default (`small`)
architecture. Weights are the untrained preset when no checkpoint is found, which does not change the
speed. Conformers and features are prepared once beforehand and are not timed; `collate` is timed
(it is part of every model call) and also reported on its own.

    .venv/bin/python bench/encoder_throughput.py [--n-molecules 128] [--dtype both] [--threads 2]

Writes bench/results/encoder_throughput.json and prints a summary.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import warnings
from typing import Any

import torch
from benchlib import DEFAULT_SMILES, busy_warning, machine_info, now_iso, read_smiles_file, write_results
from transformers.utils import logging as hf_logging

from molm3d_core.checkpoints import load_model
from molm3d_core.chem import ConformerOptions, MoleculeFeatures, collate, featurize, generate_conformer, parse_smiles
from molm3d_core.errors import MoleculeError
from molm3d_core.models.molm3d import MoLM3DConfig

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-molecules", type=int, default=256, help="molecules per timed pass (the list is cycled)")
    p.add_argument("--batch-size", type=int, default=64, help="the large batch size compared with batch 1")
    p.add_argument(
        "--dtype", default="both", choices=["both", *DTYPES], help="model dtype; 'both' = float32 then bfloat16"
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per batch size; the best pass is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed batch-1 calls before timing (large batch: one)")
    p.add_argument(
        "--no-sorted", action="store_true", help="skip the extra large-batch pass over length-sorted molecules"
    )
    p.add_argument("--smiles", default=str(DEFAULT_SMILES), help="'SMILES name' file of molecules")
    p.add_argument("--preset", default="small", help="architecture when no checkpoint is found")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the molecule order")
    p.add_argument("--output", default=None, help="results JSON (default bench/results/encoder_throughput.json)")
    return p.parse_args(argv)


def prepare_features(path: str, max_atoms: int) -> tuple[list[tuple[str, MoleculeFeatures]], dict[str, Any]]:
    """Conformer + features for every molecule of the file, once (untimed for the throughput)."""
    entries = read_smiles_file(path)
    options = ConformerOptions(seed=42)
    prepared, failures = [], []
    start = time.perf_counter()
    for smiles, name in entries:
        try:
            conformer = generate_conformer(parse_smiles(smiles, record_id=name), options)
            prepared.append((name, featurize(conformer, max_atoms=max_atoms)))
        except MoleculeError as err:
            failures.append({"name": name, "error": str(err)})
    seconds = time.perf_counter() - start
    atoms = [f.num_atoms for _, f in prepared]
    info = {
        "smiles_file": path,
        "molecules_in_file": len(entries),
        "molecules_prepared": len(prepared),
        "preparation_failures": failures,
        "preparation_seconds_untimed": round(seconds, 3),
        "heavy_atoms_min": min(atoms),
        "heavy_atoms_mean": round(statistics.mean(atoms), 2),
        "heavy_atoms_max": max(atoms),
    }
    return prepared, info


def timed_pass(model: torch.nn.Module, features: list[MoleculeFeatures], batch_size: int) -> dict[str, Any]:
    """One pass over `features` in chunks of `batch_size`; per-call wall times (collate + model)."""
    call_s, collate_s, padded_tokens = [], 0.0, 0
    cpu0 = time.process_time()
    with torch.no_grad():
        for i in range(0, len(features), batch_size):
            chunk = features[i : i + batch_size]
            t0 = time.perf_counter()
            batch = collate(chunk)
            t1 = time.perf_counter()
            out = model.molecule_tokens(batch)
            t2 = time.perf_counter()
            if out.shape[0] != len(chunk):
                raise RuntimeError(f"molecule_tokens returned {out.shape[0]} rows for {len(chunk)} molecules")
            call_s.append(t2 - t0)
            collate_s += t1 - t0
            padded_tokens += batch["src_tokens"].numel()
    total = sum(call_s)
    cpu = time.process_time() - cpu0
    real_tokens = sum(f.atom_tokens.shape[0] for f in features)
    return {
        "molecules": len(features),
        "calls": len(call_s),
        "seconds": round(total, 4),
        "molecules_per_s": round(len(features) / total, 3),
        "collate_seconds": round(collate_s, 4),
        "ms_per_call_median": round(1000 * statistics.median(call_s), 3),
        "ms_per_call_min": round(1000 * min(call_s), 3),
        "ms_per_call_max": round(1000 * max(call_s), 3),
        "padding_overhead": round(padded_tokens / real_tokens, 3),  # token slots computed / real tokens
        # Process CPU time / (wall time x threads): well below 1 means the threads were not running
        # (other processes on the cores), which makes the pass's timing unreliable.
        "cpu_utilisation": round(cpu / (total * torch.get_num_threads()), 3),
    }


def warm_up(model: torch.nn.Module, features: list[MoleculeFeatures], batch_size: int, calls: int) -> None:
    with torch.no_grad():
        for i in range(calls):
            start = (i * batch_size) % max(1, len(features) - batch_size + 1)
            model.molecule_tokens(collate(features[start : start + batch_size]))


def bench_dtype(
    dtype: str, features: list[MoleculeFeatures], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    t0 = time.perf_counter()
    model, info = load_model(None, device="cpu", dtype=dtype, preset=args.preset)
    load_s = time.perf_counter() - t0
    model_info = {
        "model_id": info.model_id,
        "trained": info.trained,
        "checkpoint": info.path,
        "preset": model.config.preset,
        "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "qformer_params": sum(p.numel() for p in model.qformer.parameters()),
        "projector_params": sum(p.numel() for p in model.llm_proj.parameters()),
        "query_tokens": model.num_query_tokens,
        "lm_hidden_size": model.lm.hidden_size,
        "load_seconds": round(load_s, 2),
    }
    big = f"batch_{args.batch_size}"
    by_length = sorted(features, key=lambda f: f.atom_tokens.shape[0])
    # variant -> (batch size, molecule order); the sorted variant is extra information, not the headline.
    variants = {"batch_1": (1, features), big: (args.batch_size, features)}
    if not args.no_sorted:
        variants[f"{big}_length_sorted"] = (args.batch_size, by_length)
    warm_up(model, features, 1, args.warmup)
    warm_up(model, features, args.batch_size, 1)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in variants}
    # Reverse the variant order on every other repeat so slow drift in machine load hits all alike.
    for r in range(args.repeats):
        order = list(variants.items()) if r % 2 == 0 else list(reversed(variants.items()))
        for key, (size, molecules) in order:
            runs[key].append(timed_pass(model, molecules, size))
            run = runs[key][-1]
            print(
                f"  {dtype:8s} {key:24s} pass {r + 1}: {run['molecules_per_s']:8.2f} mol/s"
                f"  (cpu utilisation {run['cpu_utilisation']:.2f})",
                flush=True,
            )
    result: dict[str, Any] = {}
    for key, passes in runs.items():
        best = max(passes, key=lambda p: p["molecules_per_s"])
        result[key] = {**best, "molecules_per_s_all_passes": [p["molecules_per_s"] for p in passes]}
    for key in variants:
        if key != "batch_1":
            result[f"ratio_{key}_over_batch_1"] = round(
                result[key]["molecules_per_s"] / result["batch_1"]["molecules_per_s"], 2
            )
    del model
    gc.collect()
    return result, model_info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Quiet third-party noise: transformers' weight-loading bars and a peft FutureWarning.
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warning = busy_warning()
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [DTYPES[args.dtype]]
    machine = machine_info()

    print(f"preparing conformers + features from {args.smiles} (not timed) ...", flush=True)
    max_atoms = MoLM3DConfig.preset_config(args.preset).max_atoms  # the model's featurisation cap
    prepared, data_info = prepare_features(args.smiles, max_atoms=max_atoms)
    pool = [f for _, f in prepared]
    features = [pool[i % len(pool)] for i in range(args.n_molecules)]
    random.Random(args.seed).shuffle(features)
    data_info["timed_molecules"] = len(features)
    data_info["unique_timed_molecules"] = min(len(pool), args.n_molecules)

    results, models = {}, {}
    for dtype in dtypes:
        print(f"timing {dtype} (threads={torch.get_num_threads()}) ...", flush=True)
        results[dtype], models[dtype] = bench_dtype(dtype, features, args)

    big = f"batch_{args.batch_size}"
    payload = {
        "benchmark": "encoder_throughput",
        "description": "Encoder (Uni-Mol 3D encoder + Q-Former + projector) molecules/s, batch 1 vs batch "
        f"{args.batch_size}, CPU, torch.no_grad(); conformers/features prepared beforehand (untimed), "
        "collate timed; best of the timed passes. The *_length_sorted variant batches the same molecules "
        "sorted by size (less padding) and is extra information, not part of the headline ratio",
        "date": now_iso(),
        "machine": {**machine, "load_average_at_end": machine_info()["load_average_1_5_15min"]},
        "parameters": {
            "n_molecules": args.n_molecules,
            "batch_sizes": [1, args.batch_size],
            "dtypes": dtypes,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "warmup_calls": args.warmup,
            "length_sorted_variant": not args.no_sorted,
            "shuffle_seed": args.seed,
            "conformer_seed": 42,
            "device": "cpu",
        },
        "warnings": [warning] if warning else [],
        "data": data_info,
        "model": models[dtypes[0]],
        "results": results,
    }
    path = write_results("encoder_throughput", payload, args.output)

    print()
    print(f"Encoder throughput, CPU, {torch.get_num_threads()} threads, {args.n_molecules} molecules ({path})")
    sorted_key = f"{big}_length_sorted"
    head = f"{'dtype':10s} {'batch 1 mol/s':>14s} {f'batch {args.batch_size} mol/s':>15s} {'ratio':>7s}"
    print(head + ("" if args.no_sorted else f" {'sorted ' + str(args.batch_size) + ' mol/s':>16s} {'ratio':>7s}"))
    for dtype, r in results.items():
        line = f"{dtype:10s} {r['batch_1']['molecules_per_s']:14.2f} {r[big]['molecules_per_s']:15.2f}"
        line += f" {r[f'ratio_{big}_over_batch_1']:6.2f}x"
        if not args.no_sorted:
            line += f" {r[sorted_key]['molecules_per_s']:16.2f} {r[f'ratio_{sorted_key}_over_batch_1']:6.2f}x"
        print(line)
    if not args.no_sorted:
        print("(sorted = the same molecules ordered by size before batching: less padding; not the headline)")
    if warning:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage-3 training throughput on the property tasks: the configuration of the first default checkpoint
vs today's, side by side in one run (the model issue asks for >= 4 samples/s on 2 CPU cores).

Variants (the real `train_stage` loop: optimizer, clipping, metrics, the same data and batches):
- `before`: mixed tasks, the Q-Former trains with the LM (backward through it), fp32: the recipe of
  the first molm3d-small (0.66 samples/s measured then, on an AVX2-only CPU);
- `frozen_fp32`: property tasks only, Q-Former frozen (only the projector and LoRA train), fp32;
- `frozen_bf16`: the same under bf16 autocast (on CPUs with native bf16: AVX512-BF16 or AMX).
Each variant runs `--steps` steps `--rounds` times, interleaved, and reports its best round's
steady rate (samples/s between the first and last logged step, so start-up is not counted).
Weights are the small preset's own (packaged SmolLM2 and MiniLM, random encoder and projector):
speed does not depend on their values.

    .venv/bin/python bench/stage3_throughput.py --data DIR [--batch-size 16] [--steps 12] [--rounds 2]

Writes bench/results/stage3_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from benchlib import machine_info, now_iso, write_results

from molm3d_core.device import cpu_has_native_bf16
from molm3d_core.models import MoLM3D, MoLM3DConfig
from molm3d_core.training import TrainConfig, train_stage

PROPERTY_TASKS = ("homo", "lumo", "gap", "mw", "logp", "tpsa")
VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"freeze_qformer": False, "tasks": (), "autocast": "none"},
    "frozen_fp32": {"freeze_qformer": True, "tasks": PROPERTY_TASKS, "autocast": "none"},
    "frozen_bf16": {"freeze_qformer": True, "tasks": PROPERTY_TASKS, "autocast": "bf16"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a `molm3d data build` output folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


def steady_rate(metrics: Path, batch_size: int) -> float:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) * batch_size / (last["time"] - first["time"])


def run_variant(name: str, args: argparse.Namespace, model: MoLM3D) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data_dir=args.data, output_dir=out, steps=args.steps, batch_size=args.batch_size,
                          warmup_steps=0, log_every=2, save_every=10**9, device="cpu",
                          **VARIANTS[name])  # fmt: skip
        train_stage(3, cfg, progress=False, model=model)
        return steady_rate(cfg.stage_dir(3) / "metrics.jsonl", args.batch_size)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    model = MoLM3D(MoLM3DConfig.preset_config("small"))
    rounds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else reversed(names):  # alternate the order between rounds
            rate = run_variant(name, args, model)
            rounds[name].append(round(rate, 3))
            print(json.dumps({"round": r, "variant": name, "samples_per_s": round(rate, 3)}), flush=True)
    best = {n: max(v) for n, v in rounds.items()}
    payload: dict[str, Any] = {
        "benchmark": "stage3_throughput",
        "created": now_iso(),
        "machine": machine_info(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "parameters": {
            "batch_size": args.batch_size,
            "steps": args.steps,
            "rounds": args.rounds,
            "property_tasks": PROPERTY_TASKS,
            "threads": torch.get_num_threads(),
        },
        "variants": {n: {**VARIANTS[n], "tasks": list(VARIANTS[n]["tasks"]) or "all"} for n in names},
        "samples_per_s_rounds": rounds,
        "samples_per_s_best": best,
    }
    if "before" in best:
        payload["ratio_to_before"] = {n: round(v / best["before"], 2) for n, v in best.items()}
    path = write_results("stage3_throughput", payload, args.output)
    print(json.dumps(payload["samples_per_s_best"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

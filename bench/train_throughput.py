"""Training and decoding speed of the `small` architecture on the configured device (CPU or GPU).

Runs the real training loop (`train_stage`: autocast, optimizer, checkpoints) for stage 1 (Q-Former)
and stage 3 (instruction tuning through the LM with LoRA) at several batch sizes, then times caption
generation. Weights are random (the speed does not depend on them), so the model is built from
tokenizer + config folders alone: this runs where only a few MB can travel (a lent GPU machine).

    .venv/bin/python bench/train_throughput.py --data DIR [--lm-folder F] [--bert-folder F] [--device auto]

`--data` is any `molm3d data build` output (a 400-molecule build is enough). Steady-state samples/s
come from the metrics log's timestamps, skipping the first logging interval (CUDA warm-up, caches).
Writes bench/results/train_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import machine_info, now_iso, write_results

from molm3d_core.assets import minilm_dir, smollm2_dir
from molm3d_core.chem import collate
from molm3d_core.device import resolve_autocast, resolve_device
from molm3d_core.models import MoLM3D, MoLM3DConfig
from molm3d_core.models.lm import DecodingOptions
from molm3d_core.training import TrainConfig, TrainingData, train_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a `molm3d data build` output folder")
    p.add_argument("--lm-folder", default=None, help="SmolLM2 tokenizer + config.json (default: the packaged one)")
    p.add_argument("--bert-folder", default=None, help="MiniLM tokenizer + config.json (default: the packaged one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--stages", default="1,3")
    p.add_argument("--batch-sizes", default="8,32")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per (stage, batch size)")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--decode-batch-sizes", default="1,32")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


def random_small_model(lm_folder: str, bert_folder: str) -> MoLM3D:
    """The `small` architecture with random weights, built from tokenizer + config folders only."""
    base = MoLM3DConfig.preset_config("small")
    config = dataclasses.replace(
        base,
        lm=dataclasses.replace(base.lm, base=lm_folder, random_init={}),
        qformer=dataclasses.replace(base.qformer, bert_path=bert_folder),
    )
    return MoLM3D(config, init_bert=False)


def steady_rate(metrics: Path, batch_size: int) -> float:
    """Samples/s between the first and the last logged step (the first interval is warm-up)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) * batch_size / (last["time"] - first["time"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(args: argparse.Namespace, lm: str, bert: str, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for stage in (int(s) for s in args.stages.split(",")):
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            with tempfile.TemporaryDirectory() as out:
                cfg = TrainConfig(data_dir=args.data, output_dir=out, steps=args.steps, batch_size=bs,
                                  warmup_steps=0, device=args.device, log_every=args.log_every,
                                  save_every=10**9, max_target_tokens=96)  # fmt: skip
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                result = train_stage(stage, cfg, progress=False, model=random_small_model(lm, bert))
                rate = steady_rate(cfg.stage_dir(stage) / "metrics.jsonl", bs)
            row = {"stage": stage, "batch_size": bs, "steps": args.steps, "samples_per_s": round(rate, 2),
                   "seconds_per_step": round(bs / rate, 4), "loss_first": round(result.losses[0], 4),
                   "loss_last": round(result.losses[-1], 4)}  # fmt: skip
            if device.type == "cuda":
                row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def time_decoding(args: argparse.Namespace, lm: str, bert: str, device: torch.device) -> list[dict[str, Any]]:
    data = TrainingData.load(args.data, "train")
    model = random_small_model(lm, bert)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    decoding = DecodingOptions(max_new_tokens=args.max_new_tokens)
    rng = np.random.default_rng(0)
    ids = sorted(data.molecules)
    rows = []
    for bs in (int(b) for b in args.decode_batch_sizes.split(",")):
        chosen = [ids[i % len(ids)] for i in range(bs)]
        features = [data.features(m, rng, etkdg_prob=0.0, max_atoms=model.config.max_atoms) for m in chosen]
        batch = {k: v.to(device) for k, v in collate(features).items()}
        smiles = [data.molecules[m]["smiles"] for m in chosen]
        with torch.inference_mode():
            model.caption(batch, smiles, decoding)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            gens = model.caption(batch, smiles, decoding)
            sync(device)
            dt = time.perf_counter() - t0
        tokens = sum(g.num_tokens for g in gens)
        row = {"batch_size": bs, "dtype": str(dtype).removeprefix("torch."), "captions_per_s": round(bs / dt, 2),
               "generated_tokens_per_s": round(tokens / dt, 1), "mean_tokens": tokens / bs}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lm = args.lm_folder or str(smollm2_dir())
    bert = args.bert_folder or str(minilm_dir())
    device = resolve_device(args.device)
    payload: dict[str, Any] = {
        "benchmark": "train_throughput",
        "created": now_iso(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "autocast_bf16": resolve_autocast("auto", device),
        "weights": "random (small architecture: Uni-Mol 8x256, Q-Former, SmolLM2-135M + LoRA r8)",
        "machine": machine_info(),
        "training": time_training(args, lm, bert, device),
        "decoding": time_decoding(args, lm, bert, device),
    }
    path = write_results(f"train_throughput_{device.type}", payload, args.output)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

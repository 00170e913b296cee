"""`molm3d train STAGE --config PRESET|FILE.toml`: run (or resume) one training stage."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run or resume a training stage (0: encoder, 1: Q-Former, 2: captions, 3: all)",
                       description="Resumes from {output}/stage{N}/last when present.")  # fmt: skip
    p.add_argument("stage", type=int, choices=[0, 1, 2, 3])
    p.add_argument("--config", default="small", help="preset (tiny, small, official) or a TOML file")
    p.add_argument("--data", help="dataset folder (overrides the config's data_dir)")
    p.add_argument("--output", help="run folder (overrides output_dir)")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides steps)")
    p.add_argument("--init", help="checkpoint to start from (default: the previous stage's final)")
    p.add_argument("--smiles-only", action="store_true", help="train the SMILES-only baseline (no <mol> tokens)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, value in TOML syntax (e.g. --set lr=3e-4); repeatable",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, train_stage

    cfg = TrainConfig.load(args.config)
    overrides = {"data_dir": args.data, "output_dir": args.output, "steps": args.steps, "init_checkpoint": args.init}
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
    if args.smiles_only:
        cfg = cfg.replace(molecule_tokens=False)
    if args.set:
        cfg = cfg.replace(**_parse_sets(args.set))
    result = train_stage(args.stage, cfg)
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a (already complete)"
    print(f"stage {args.stage}: {result.steps} steps, last loss {last}; checkpoint {Path(result.final_checkpoint)}")
    return 0


def _parse_sets(items: list[str]) -> dict[str, object]:
    import tomllib

    values: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = value  # a bare string
    return values

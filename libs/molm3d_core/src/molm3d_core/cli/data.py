"""`molm3d data build`: write the instruction dataset (see `molm3d_core.data` for the format)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `data build` on the top-level subcommands."""
    data = subparsers.add_parser("data", help="build the instruction dataset", description="Instruction data.")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="build the QM9 + ChEBI instruction dataset into a folder",
        description="Build the 3D-MoIT-style dataset (QM9, ChEBI via c3p, RDKit) with a dataset card.",
    )
    build.add_argument("-o", "--output", type=Path, required=True, help="dataset folder to write")
    build.add_argument("--limit", type=_positive, help="first N molecules of each source (for slices and tests)")
    build.add_argument("--workers", type=_positive, default=1, help="processes for conformers (default 1)")
    build.add_argument("--seed", type=int, default=42, help="seed of conformers, questions and splits (default 42)")
    build.add_argument(
        "--xtb", action="store_true", help="add GFN2-xTB HOMO/LUMO of ChEBI molecules (tasks xtb_homo, xtb_lumo)"
    )
    build.add_argument(
        "--retrieval-size",
        type=_positive,
        help="retrieval test pairs (default: 2000, or every captioned ChEBI test molecule when there are fewer)",
    )
    build.add_argument(
        "--max-heavy-atoms",
        type=_positive,
        default=256,
        help="drop larger molecules (default 256, the encoder limit; large ChEBI molecules are slow to embed)",
    )
    build.add_argument("--qm9-split", default="0.8,0.1,0.1", help="QM9 train,valid,test fractions")
    build.add_argument(
        "--chebi-split",
        default="0.6,0.1,0.3",
        help="ChEBI train,valid,test fractions of captioned molecules (default 0.6,0.1,0.3)",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    build.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    build.set_defaults(handler=run_build)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_build(args: argparse.Namespace) -> int:
    from ..data import BuildConfig, SplitFractions, build_dataset

    config = BuildConfig(
        output=args.output,
        limit=args.limit,
        workers=args.workers,
        seed=args.seed,
        xtb=args.xtb,
        retrieval_size=args.retrieval_size,
        max_heavy_atoms=args.max_heavy_atoms,
        qm9_fractions=SplitFractions.parse(args.qm9_split),
        chebi_fractions=SplitFractions.parse(args.chebi_split),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    card = build_dataset(config)
    counts = card["counts"]
    molecules = sum(by["total"] for by in counts["molecules"].values())
    examples = {split: sum(c.values()) for split, c in counts["tasks"].items()}
    print(
        f"wrote {args.output}: {molecules} molecules, examples {examples}, {counts['retrieval']} retrieval pairs, "
        f"{card['size_bytes'] / 1e6:.1f} MB in {card['build']['seconds']:.0f} s",
        file=sys.stderr,
    )
    return 0

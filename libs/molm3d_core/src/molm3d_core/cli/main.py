"""The `molm3d` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import data, evaluate, index, molecules, train
from .plugins import add_plugin_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molm3d", description="Language models that read 3D molecules (3D-MoLM).")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG | INFO | WARNING (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for task, help_text in (
        ("caption", "describe each molecule"),
        ("ask", "answer a question about each molecule"),
        ("embed", "retrieval embeddings of each molecule (query tokens x embed_dim)"),
        ("predict", "molecular properties from the 3D encoder's heads, with units (no LM: milliseconds a molecule)"),
    ):
        molecules.add_arguments(sub.add_parser(task, help=help_text, description=help_text), task)

    train.add_parser(sub)

    data.add_parser(sub)
    evaluate.add_parser(sub)
    index.add_parser(sub)
    index.add_retrieve_parser(sub)
    add_plugin_commands(sub)

    assets = sub.add_parser("assets", help="prepare packaged model assets (one-time GGUF conversion)")
    assets.add_argument("action", choices=["prepare"])
    assets.set_defaults(handler=_assets)

    imp = sub.add_parser(
        "import",
        help="convert official Uni-Mol / 3D-MoLM weights into a molm3d checkpoint",
        description="Build the `official` preset and load official weights into it.",
    )
    imp.add_argument("--unimol", type=Path, help="Uni-Mol weights (mol_pre_no_h_220816.pt)")
    imp.add_argument("--stage1", type=Path, help="3D-MoLM stage-1 checkpoint (.ckpt)")
    imp.add_argument("--stage2", type=Path, help="3D-MoLM stage-2 or stage-3 checkpoint (.ckpt)")
    imp.add_argument("--lm-base", required=True, help="folder of the base LM (Llama-2-7B in Hugging Face format)")
    imp.add_argument("--bert", help="SciBERT folder (tokenizer for the Q-Former's text branch)")
    imp.add_argument("-o", "--output", type=Path, required=True, help="checkpoint folder to write")
    imp.set_defaults(handler=_import)

    exp = sub.add_parser(
        "export",
        help="write a checkpoint for distribution (e.g. fp16, a new model id)",
        description="Reload a checkpoint (e.g. runs/small/stage3/final) and write its trained weights again, "
        "cast to --dtype: how models/molm3d-small is packaged.",
    )
    exp.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder to read")
    exp.add_argument("-o", "--output", type=Path, required=True, help="checkpoint folder to write")
    exp.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    exp.add_argument("--model-id", help="model id of the written checkpoint (default: the source's)")
    exp.set_defaults(handler=_export)
    return parser


def _export(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoints import load_model, save_checkpoint

    model, info = load_model(args.checkpoint, device="cpu", dtype="float32")
    metadata = {**info.metadata, "exported_from": str(args.checkpoint), "exported_dtype": args.dtype}
    folder = save_checkpoint(model, args.output, model_id=args.model_id or info.model_id, metadata=metadata,
                             dtype=getattr(torch, args.dtype))  # fmt: skip
    size = (folder / "model.safetensors").stat().st_size
    print(f"wrote {folder} ({size / 1e6:.1f} MB, {args.dtype})")
    return 0


def _assets(args: argparse.Namespace) -> int:
    from ..assets import prepare_assets

    for name, path in prepare_assets().items():
        print(f"{name}: {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..checkpoints import import_official, save_checkpoint
    from ..models import MoLM3D, MoLM3DConfig

    if not (args.unimol or args.stage1 or args.stage2):
        raise SystemExit("molm3d import: give at least one of --unimol, --stage1, --stage2")
    config = MoLM3DConfig.preset_config("official", base=args.lm_base)
    config.qformer.bert_path = args.bert
    model = MoLM3D(config, init_bert=False)
    report = import_official(model, args.unimol, [p for p in (args.stage1, args.stage2) if p])
    save_checkpoint(
        model,
        args.output,
        model_id=f"3d-molm-official-import:{args.output.name}",
        metadata={"imported": {k: str(v) for k, v in vars(args).items() if k in ("unimol", "stage1", "stage2")}},
    )
    print(f"mapped {len(report.mapped)} official tensors; skipped {len(report.skipped)}:")
    for key, reason in sorted(report.skipped.items()):
        print(f"  {key}: {reason}")
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..log import setup_logging

    setup_logging(args.log_level.upper())
    from ..assets import AssetError
    from ..errors import MoleculeError

    try:
        return args.handler(args)
    except (MoleculeError, ValueError, FileNotFoundError, AssetError) as err:
        if args.log_level.upper() == "DEBUG":
            raise
        print(f"molm3d {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

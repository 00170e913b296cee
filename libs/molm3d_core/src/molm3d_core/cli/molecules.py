"""`molm3d caption | ask | embed | predict`: molecules from SMILES or files, results as JSON lines or CSV.

`predict` reads the property heads on the 3D encoder and never loads the LM (milliseconds per molecule
on a CPU, where caption and ask take seconds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .output import FORMATS, ResultWriter

if TYPE_CHECKING:
    from ..checkpoints import CheckpointInfo
    from ..models import MoLM3D


def add_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a SMILES string or a file: .smi/.smiles/.txt, .sdf/.sd, .mol, .xyz, .pdb",
    )
    if task == "ask":
        parser.add_argument("--question", "-q", required=True, help="the question to ask about each molecule")
    if task == "predict":
        parser.add_argument(
            "--properties",
            nargs="+",
            metavar="NAME",
            help="the properties to output, in this order (default: every property head of the checkpoint)",
        )
    parser.add_argument("--checkpoint", help="checkpoint folder (default: $MOLM3D_CHECKPOINT or models/molm3d-small)")
    if task in ("caption", "ask"):
        parser.add_argument("--remote", metavar="HOST:PORT",
                            help="send the molecules as given to a running `molm3d serve` over gRPC instead of "
                                 "loading a model here (token from $MOLM3D_API_TOKEN); the server reads them and "
                                 "makes their conformers with its own settings")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16")
    parser.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
    parser.add_argument("-o", "--output", type=Path, help="write results here instead of stdout")
    parser.add_argument("--batch-size", type=_positive, default=8, help="molecules per model call (default 8)")
    parser.add_argument(
        "--n-conformers",
        type=_positive,
        default=1,
        help="ETKDG conformers per molecule; the lowest-energy one is used (default 1)",
    )
    parser.add_argument("--seed", type=int, default=42, help="conformer seed (default 42)")
    parser.add_argument(
        "--regenerate-conformers",
        action="store_true",
        help="ignore 3D coordinates that come with SDF/XYZ/PDB input and generate new ones",
    )
    parser.add_argument("--xyz-charge", type=int, default=0, help="total charge for XYZ bond perception")
    parser.add_argument("--max-heavy-atoms", type=_positive, default=256, help="reject larger molecules")
    if task in ("caption", "ask"):
        parser.add_argument("--beams", type=_positive, default=1, help="beam width (1 = greedy; the paper used 5)")
        from ..decoding import default_decoding  # torch-free: the parser stays fast

        default = default_decoding(task)
        parser.add_argument("--max-new-tokens", type=_positive, default=default.max_new_tokens,
                            help=f"(default {default.max_new_tokens})")  # fmt: skip
        parser.add_argument("--repetition-penalty", type=float, default=default.repetition_penalty,
                            help=f"> 0, 1 = off (default {default.repetition_penalty:g})")  # fmt: skip
        parser.add_argument("--no-repeat-ngram", type=int, default=default.no_repeat_ngram_size, metavar="N",
                            help="never repeat an n-gram of N generated tokens; 0 = off "
                                 f"(default {default.no_repeat_ngram_size})")  # fmt: skip
    parser.set_defaults(handler=run, task=task)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import load_model
    from ..chem import ConformerOptions, InputLimits, count_records, read_inputs
    from ..chem.inputs import split_inputs
    from ..models import DecodingOptions
    from ..pipeline import Predictor

    limits = InputLimits(max_heavy_atoms=args.max_heavy_atoms)
    if getattr(args, "remote", None):  # records as given (text + format): the server parses each once
        from .plugins import plugin

        results = plugin("molm3d.remote", "client")(args, split_inputs(args.inputs, limits=limits))
        return _write_results(args, results, count_records(args.inputs))
    records = read_inputs(args.inputs, limits=limits, xyz_charge=args.xyz_charge)

    # predict reads the encoder's heads only: the LM is neither loaded nor held.
    model, info = load_model(args.checkpoint, device=args.device, dtype=args.dtype,
                             with_lm=args.task != "predict")  # fmt: skip
    if not info.trained:
        print(
            f"note: {info.model_id}: no trained checkpoint; outputs come from untrained weights",
            file=sys.stderr,
        )
    properties = None
    if args.task == "predict":
        properties, info = _property_heads(model, info, args.properties)
    decoding = None
    if args.task in ("caption", "ask"):
        decoding = DecodingOptions(
            num_beams=args.beams,
            max_new_tokens=args.max_new_tokens,
            repetition_penalty=args.repetition_penalty,
            no_repeat_ngram_size=args.no_repeat_ngram,
        )
    predictor = Predictor(
        model,
        info,
        batch_size=args.batch_size,
        decoding=decoding,
        conformer_options=ConformerOptions(
            n_conformers=args.n_conformers, seed=args.seed, use_input_3d=not args.regenerate_conformers
        ),
        properties=properties,
    )
    question = getattr(args, "question", None)
    results = predictor.run(records, args.task, question)  # checks the task's options before any output
    return _write_results(args, results, count_records(args.inputs), properties or ())


def _property_heads(
    model: MoLM3D, info: CheckpointInfo, names: list[str] | None
) -> tuple[tuple[str, ...], CheckpointInfo]:
    """The properties to output (ValueError -> exit 2 when there are no heads or a name is not one of
    them) and the provenance to report. Heads never given their target statistics still answer, on
    placeholder statistics (mean 0, std 1): the rows say `model_trained: false` and a note says why."""
    import dataclasses

    import torch

    from ..pipeline import check_properties

    properties = check_properties(model, names, checkpoint=info.path or info.model_id)
    head = model.property_head
    if not head.trained:
        if info.trained:  # the untrained-checkpoint note above covers the other case
            print(
                f"note: {info.model_id}: the property heads were never trained (no target statistics); "
                "values come from untrained heads and mean nothing",
                file=sys.stderr,
            )
        n = len(head.targets)
        head.set_statistics(torch.zeros(1, n), torch.zeros(1, n, dtype=torch.bool))  # mean 0, std 1
        info = dataclasses.replace(info, trained=False)
    return properties, info


def _write_results(
    args: argparse.Namespace, results: Iterator[dict[str, Any]], total: int | None, properties: tuple[str, ...] = ()
) -> int:
    """Write result rows as they come, with a progress bar; exit code 1 when any record failed."""
    from tqdm import tqdm

    stream = args.output.open("w", newline="") if args.output else sys.stdout
    n_ok = n_failed = 0
    try:
        writer = ResultWriter(stream, args.format, args.task, properties)
        with tqdm(
            total=total, unit="mol", desc=args.task, file=sys.stderr, disable=None if total != 1 else True
        ) as bar:
            for result in results:
                bar.update(1)
                writer.write(result)
                if result["status"] == "ok":
                    n_ok += 1
                else:
                    n_failed += 1
                    print(
                        f"error: {result['record_id']}: {result['error_code']}: {result['error_message']}",
                        file=sys.stderr,
                    )
    finally:
        if args.output:
            stream.close()
    if n_failed:
        print(
            f"{n_failed} of {n_ok + n_failed} records failed (listed in the output with status=error)",
            file=sys.stderr,
        )
        return 1
    return 0

"""`molm3d eval`: the reference evaluation protocol on a dataset split, as markdown + JSON.

Examples:
    molm3d eval --data DIR --limit 1000 --text-limit 100           # 1,000 per property task, 100 captions
    molm3d eval --data DIR --tasks homo lumo gap --token-ablation  # MAE with own vs another molecule's tokens
    molm3d eval --data DIR --tasks caption --decoding-grid --text-limit 100 --markdown grid.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..decoding import DecodingOptions, default_decoding

    default, caption = DecodingOptions(), default_decoding("caption")  # the CLI's and the services' defaults too
    p = sub.add_parser("eval", help="evaluate a checkpoint (property MAE, text metrics, retrieval) with baselines")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the default checkpoint)")
    p.add_argument("--data", required=True, help="dataset folder from `molm3d data build`")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--tasks", nargs="+", default=[], help="task names (homo, lumo, ..., caption, retrieval)")
    p.add_argument("--limit", type=int, help="examples per task (and retrieval pairs; and property-head molecules)")
    p.add_argument(
        "--text-limit",
        type=int,
        help="examples per text task (caption, descriptions, ...), instead of --limit: long answers are slow to "
        "generate on CPU, short property answers are not (e.g. --limit 1000 --text-limit 100)",
    )
    p.add_argument("--smiles-only-checkpoint", help="the SMILES-only baseline checkpoint to score beside")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--markdown", type=Path, help="write the markdown table here (it is printed either way)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--beams", type=int, default=1, help="beam width (the paper used 5)")
    p.add_argument("--max-new-tokens", type=int,
                   help=f"default: {caption.max_new_tokens} for captions, {default.max_new_tokens} for the other "
                        "tasks, as `molm3d caption` and `molm3d ask`")  # fmt: skip
    p.add_argument(
        "--repetition-penalty",
        type=float,
        help=f"> 1 discourages repeated tokens, 1 = off (default: {caption.repetition_penalty:g} for captions, "
        f"{default.repetition_penalty:g} for the other tasks, as `molm3d caption` and `molm3d ask`)",
    )
    p.add_argument(
        "--no-repeat-ngram",
        type=int,
        default=default.no_repeat_ngram_size,
        help="no n-gram of this many LM tokens twice in a generation "
        f"(0 = off; default {default.no_repeat_ngram_size})",
    )
    p.add_argument("--length-penalty", type=float, default=default.length_penalty,
                   help="beam search: > 1 favours longer texts")  # fmt: skip
    p.add_argument("--no-rerank", action="store_true", help="retrieval without the matching-head re-rank (fast)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="resamples of the 95%% bootstrap intervals over examples (0 = no intervals)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the token-ablation permutation")
    p.add_argument(
        "--token-ablation",
        action="store_true",
        help="answer the property tasks again with another molecule's <mol> tokens (3D sections)",
    )
    p.add_argument("--no-heads", action="store_true", help="skip the property-head sections")
    p.add_argument(
        "--no-lm",
        action="store_true",
        help="no LM answers: only the property heads and the training mean (fast: one encoder pass per example, "
        "so the whole test split takes minutes)",
    )
    p.add_argument(
        "--geometries",
        nargs="+",
        choices=("dft", "etkdg"),
        default=["dft", "etkdg"],
        help="the 3D inputs to score: the dataset's DFT geometry and/or the conformer generated from the SMILES "
        "(the 3D sections and the head sections; default both)",
    )
    p.add_argument(
        "--decoding-grid",
        action="store_true",
        help="instead of the usual sections, compare greedy / repetition penalty / no-repeat n-gram / beam 3 and 5 "
        "decodings on the text tasks (default: caption); --text-limit applies",
    )
    p.add_argument(
        "--progress-every",
        type=int,
        default=10,
        metavar="N",
        help="when stderr is not a terminal: a progress line every N batches (0 = none)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import load_model
    from ..evaluation.bootstrap import Bootstrap
    from ..evaluation.runner import EvalOptions, evaluate

    decoding = {"num_beams": args.beams, "length_penalty": args.length_penalty,
                "no_repeat_ngram_size": args.no_repeat_ngram}  # fmt: skip
    for name in ("max_new_tokens", "repetition_penalty"):  # unset: each task's default
        if getattr(args, name) is not None:
            decoding[name] = getattr(args, name)
    tty = sys.stderr.isatty()
    opts = EvalOptions(split=args.split, tasks=tuple(args.tasks), limit=args.limit, text_limit=args.text_limit,
                       batch_size=args.batch_size, rerank=not args.no_rerank, decoding=decoding,
                       progress=tty, progress_every=0 if tty else args.progress_every,
                       bootstrap=Bootstrap(resamples=args.bootstrap, seed=args.seed) if args.bootstrap > 0 else None,
                       heads=not args.no_heads, token_ablation=args.token_ablation, ablation_seed=args.seed,
                       decoding_grid=args.decoding_grid, geometries=tuple(args.geometries),
                       lm=not args.no_lm)  # fmt: skip
    model, info = load_model(args.checkpoint, device=args.device)
    baseline = None
    if args.smiles_only_checkpoint and not args.decoding_grid:
        baseline = load_model(args.smiles_only_checkpoint, device=args.device)[0]
    report = evaluate(model, args.data, opts, smiles_only=baseline, model_id=info.model_id)
    markdown = report.to_markdown(decimals=3)
    print(markdown)
    if args.markdown:
        args.markdown.write_text(markdown)
    if args.json:
        args.json.write_text(report.to_json())
    return 0

"""`molm3d eval`: the reference evaluation protocol on a dataset split, as markdown + JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (property MAE, text metrics, retrieval) with baselines")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the default checkpoint)")
    p.add_argument("--data", required=True, help="dataset folder from `molm3d data build`")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--tasks", nargs="+", default=[], help="task names (homo, lumo, ..., caption, retrieval)")
    p.add_argument("--limit", type=int, help="examples per task (and retrieval pairs)")
    p.add_argument("--smiles-only-checkpoint", help="the SMILES-only baseline checkpoint to score beside")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--markdown", type=Path, help="write the markdown table here (it is printed either way)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--beams", type=int, default=1, help="beam width (the paper used 5)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--no-rerank", action="store_true", help="retrieval without the matching-head re-rank (fast)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import load_model
    from ..evaluation.runner import EvalOptions, evaluate
    from ..models import DecodingOptions

    model, info = load_model(args.checkpoint, device=args.device)
    baseline = load_model(args.smiles_only_checkpoint, device=args.device)[0] if args.smiles_only_checkpoint else None
    opts = EvalOptions(split=args.split, tasks=tuple(args.tasks), limit=args.limit, batch_size=args.batch_size,
                       rerank=not args.no_rerank,
                       decoding=DecodingOptions(num_beams=args.beams, max_new_tokens=args.max_new_tokens),
                       progress=sys.stderr.isatty())  # fmt: skip
    report = evaluate(model, args.data, opts, smiles_only=baseline, model_id=info.model_id)
    markdown = report.to_markdown()
    print(markdown)
    if args.markdown:
        args.markdown.write_text(markdown)
    if args.json:
        args.json.write_text(report.to_json())
    return 0

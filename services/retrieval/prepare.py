"""The retrieval stage's model work, run in a child process so that the replica itself holds FAISS only.

    python -m molm3d_services.retrieval.prepare --out DIR [--checkpoint C] [--device D] [--dtype T]
        [--preset P] [--num-threads N] [--library]

Writes DIR/source.json (the served checkpoint's EmbeddingSource: index folders are checked against
it) and, with --library, DIR/molecules and DIR/texts: the example library of `library/` indexed
with that checkpoint. Exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LIBRARY = Path(__file__).with_name("library")
LIBRARY_FILES = {"molecules": "molecules.smi", "texts": "texts.jsonl"}
SOURCE_FILE = "source.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--preset", default="small")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--library", action="store_true", help="also index the example library")
    args = p.parse_args(argv)

    import torch

    from molm3d_core.checkpoints import load_model
    from molm3d_core.log import setup_logging
    from molm3d_core.retrieval import EmbeddingSource, build_index

    setup_logging()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model, info = load_model(args.checkpoint, device=args.device, dtype=args.dtype, preset=args.preset,
                             with_lm=False)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    if args.library:
        for content, name in LIBRARY_FILES.items():
            build_index(args.out / content, model, info, **{content: LIBRARY / name})
    source = EmbeddingSource.of(model, info)
    (args.out / SOURCE_FILE).write_text(json.dumps(source.to_dict()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

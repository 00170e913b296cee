"""`molm3d index build | add | remove | info` and `molm3d retrieve`: FAISS retrieval indexes.

Build and add report every skipped record on stderr and exit 1 when any was skipped (the others are
indexed and committed), as `molm3d caption` does for failed records.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from .output import FORMATS

_HIT_COLUMNS = ("rank", "id", "score", "similarity", "match_score")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint folder (default: $MOLM3D_CHECKPOINT or models/molm3d-small)")
    p.add_argument("--device", default="auto", help="model device: auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16")


def _source_options(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--molecules", type=Path, help="molecule library: .smi/.csv (smiles, id columns)/.sdf/...")
    source.add_argument("--texts", type=Path, help="text corpus: JSON lines with 'id', 'text' and other fields")
    p.add_argument("--batch-size", type=int, default=32, help="records per model call (default 32)")
    p.add_argument("--seed", type=int, default=42, help="conformer seed (default 42)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build and update retrieval indexes (molecules by text, texts by molecule)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = actions.add_parser(
        "build",
        help="a new index from a molecule library or a text corpus",
        description="Replaces any index at -o once complete; bad records are reported and skipped.",
    )
    _source_options(build)
    build.add_argument("-o", "--output", type=Path, required=True, help="index folder")
    build.add_argument("--kind", choices=["flat", "hnsw", "ivfpq"], default="flat", help="exact or ANN (default flat)")
    build.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node (default 32)")
    build.add_argument("--ef-construction", type=int, default=200, help="hnsw: build candidate list (default 200)")
    build.add_argument("--ef-search", type=int, default=128, help="hnsw: query candidate list (default 128)")
    build.add_argument("--nlist", type=int, default=1024, help="ivfpq: k-means cells (default 1024)")
    build.add_argument("--pq-m", type=int, default=32, help="ivfpq: sub-quantisers, divides the dim (default 32)")
    build.add_argument("--nbits", type=int, default=8, help="ivfpq: bits per code (default 8)")
    build.add_argument("--nprobe", type=int, default=32, help="ivfpq: cells searched per query (default 32)")
    build.add_argument("--refine-factor", type=int, default=0, help="ivfpq: re-score N x k exactly (default 0: off)")
    build.add_argument("--faiss-device", choices=["auto", "cpu", "gpu"], default="auto", help="FAISS search device")
    _model_options(build)
    build.set_defaults(handler=run_build)

    add = actions.add_parser("add", help="add a file's records to an index (same checkpoint only)")
    add.add_argument("--index", type=Path, required=True, help="index folder")
    _source_options(add)
    _model_options(add)
    add.set_defaults(handler=run_add)

    remove = actions.add_parser("remove", help="remove records by id")
    remove.add_argument("--index", type=Path, required=True, help="index folder")
    remove.add_argument("--ids", nargs="+", required=True, metavar="ID")
    remove.set_defaults(handler=run_remove)

    info = actions.add_parser("info", help="print the index manifest (kind, size, checkpoint, version)")
    info.add_argument("--index", type=Path, required=True, help="index folder")
    info.set_defaults(handler=run_info)


def add_retrieve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrieve", help="search an index: --text finds molecules, --smiles finds texts",
                       description="Hits best first, each with its id, score and record fields.")  # fmt: skip
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", type=Path, help="index folder (searched in this process)")
    where.add_argument(
        "--remote",
        metavar="HOST:PORT",
        help="ask a running `molm3d serve` over gRPC instead (token from $MOLM3D_API_TOKEN)",
    )
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--smiles", help="a molecule (searches a text index)")
    query.add_argument("--text", help="a description (searches a molecule index)")
    p.add_argument("-k", type=int, default=20, help="hits to return (default 20)")
    p.add_argument("--rerank", action="store_true", help="re-score the top candidates with the matching head")
    p.add_argument("--rerank-top", type=int, default=128, help="candidates re-scored with --rerank (default 128)")
    p.add_argument("--ef-search", type=int, help="hnsw: override the index's efSearch")
    p.add_argument("--nprobe", type=int, help="ivfpq: override the index's nprobe")
    p.add_argument("--faiss-device", choices=["auto", "cpu", "gpu"], help="FAISS search device (default: index's)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
    p.add_argument("-o", "--output", type=Path, help="write hits here instead of stdout")
    _model_options(p)
    p.set_defaults(handler=run_retrieve)


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from ..checkpoints import load_model

    # Retrieval needs the encoders and the matching head only: the LM's weights stay unloaded.
    model, info = load_model(args.checkpoint, device=args.device, dtype=args.dtype, with_lm=False)
    if not info.trained:
        print(f"note: {info.model_id}: no trained checkpoint; embeddings come from untrained weights", file=sys.stderr)
    return model, info


def _index_file(args: argparse.Namespace, action: Any, **kwargs: Any) -> int:
    """Read, encode and commit one file with a progress bar; report skipped records."""
    from tqdm import tqdm

    from ..chem import ConformerOptions
    from ..retrieval import count_corpus, count_library

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, info = _load(args)
    path = args.molecules or args.texts
    total = count_library(path) if args.molecules else count_corpus(path)
    options: dict[str, Any] = {"batch_size": args.batch_size}
    if args.molecules:
        options["conformer_options"] = ConformerOptions(seed=args.seed)
    with tqdm(total=total, unit="rec", desc="index", file=sys.stderr, disable=None) as bar:

        def on_skip(skipped: Any) -> None:
            bar.write(f"skipped: {skipped}", file=sys.stderr)

        report = action(model=model, info=info, molecules=args.molecules, texts=args.texts, progress=bar,
                        on_skip=on_skip, **options, **kwargs)  # fmt: skip
    where = getattr(args, "output", None) or args.index
    print(f"indexed {report.added} records, skipped {len(report.skipped)}; {where} is at version {report.version}",
          file=sys.stderr)  # fmt: skip
    return 1 if report.skipped else 0


def run_build(args: argparse.Namespace) -> int:
    from ..retrieval import IndexConfig, build_index

    config = IndexConfig(kind=args.kind, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                         ef_search=args.ef_search, nlist=args.nlist, pq_m=args.pq_m, nbits=args.nbits,
                         nprobe=args.nprobe, refine_factor=args.refine_factor, device=args.faiss_device)  # fmt: skip

    def action(**kw: Any) -> Any:
        return build_index(args.output, kw.pop("model"), kw.pop("info"), config=config, **kw)

    return _index_file(args, action)


def run_add(args: argparse.Namespace) -> int:
    from ..retrieval import update_index

    def action(**kw: Any) -> Any:
        return update_index(args.index, kw.pop("model"), kw.pop("info"), **kw)

    return _index_file(args, action)


def run_remove(args: argparse.Namespace) -> int:
    from ..retrieval import remove_from_index

    version, missing = remove_from_index(args.index, args.ids)
    for record_id in missing:
        print(f"not in the index: {record_id}", file=sys.stderr)
    print(f"removed {len(args.ids) - len(missing)} records; {args.index} is at version {version}", file=sys.stderr)
    return 1 if missing else 0


def run_info(args: argparse.Namespace) -> int:
    from ..retrieval import read_manifest

    print(json.dumps(read_manifest(args.index).to_dict(), indent=2))
    return 0


def local_hits(args: argparse.Namespace) -> list[Any]:
    """Search the index folder in this process (the model is loaded here)."""
    from ..retrieval import RetrievalIndex, Retriever

    index = RetrievalIndex.open(args.index, device=args.faiss_device)
    index.vectors.set_search_params(ef_search=args.ef_search, nprobe=args.nprobe)
    model, info = _load(args)
    retriever = Retriever(index, model, info)
    return retriever.search(smiles=args.smiles, text=args.text, k=args.k, rerank=args.rerank,
                            rerank_top=args.rerank_top)  # fmt: skip


def hit_rows(hits: list[Any]) -> list[dict[str, Any]]:
    """One flat dict per hit: rank, id, score (and its parts), then the record's fields."""
    rows = []
    for rank, hit in enumerate(hits, start=1):
        row: dict[str, Any] = {"rank": rank, "id": hit.id, "score": hit.score, "similarity": hit.similarity}
        if hit.match_score is not None:
            row["match_score"] = hit.match_score
        row.update({k: v for k, v in hit.record.items() if k not in _HIT_COLUMNS})
        rows.append(row)
    return rows


def write_hits(rows: list[dict[str, Any]], stream: TextIO, fmt: str) -> None:
    if fmt == "jsonl":
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    columns = [c for c in _HIT_COLUMNS if any(c in r for r in rows)]
    columns += sorted({k for r in rows for k in r} - set(columns))
    writer = csv.DictWriter(stream, fieldnames=columns)
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)


def run_retrieve(args: argparse.Namespace) -> int:
    if args.k < 1 or args.rerank_top < 1:
        raise ValueError("-k and --rerank-top must be >= 1")
    if args.remote:
        from .plugins import plugin

        if args.rerank:
            raise ValueError("--rerank needs --index: the served API re-ranks nothing")
        rows = plugin("molm3d.remote", "retrieve")(args)
    else:
        rows = hit_rows(local_hits(args))
    stream = args.output.open("w", newline="") if args.output else sys.stdout
    try:
        write_hits(rows, stream, args.format)
    finally:
        if args.output:
            stream.close()
    return 0

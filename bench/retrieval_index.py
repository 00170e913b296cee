"""Retrieval index: recall@20 against exact search and per-query latency of flat, HNSW and IVF-PQ.

Each size N (default 100K and 1M vectors of the small model's embedding size, 256) is indexed with
`molm3d_core.retrieval.VectorIndex` (one vector per item, as a text index) in every kind. Queries are
answered one at a time through `VectorIndex.search` (the library path, Python included) with one FAISS
thread, as a server answering concurrent queries on separate cores would; builds use `--build-threads`.
Recall@20 = |ANN top 20 & exact top 20| / 20, averaged over the queries; exact = the flat kind.

Vectors are synthetic (encoding a million molecules is out of reach on this machine): `--data latent`
(default) draws points from `--clusters` Gaussian clusters in an `--intrinsic-dim`-dimensional latent
space, maps them into 256-d by a random orthonormal map, adds isotropic noise and normalises (trained
embeddings have a low intrinsic dimension); `--data isotropic` puts the same clusters and noise directly
in 256-d (no low-dimensional structure for the PQ codes to exploit).
Queries come from the same distribution, never from the indexed set.

    .venv/bin/python bench/retrieval_index.py [--sizes 100000 1000000] [--budget-s 900]

A kind whose build runs past `--budget-s` (checked between chunks of added vectors) is recorded as
skipped with how far it got. Writes bench/results/retrieval_index.json and prints a summary.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from typing import Any

import faiss
import numpy as np
from benchlib import busy_warning, machine_info, now_iso, write_results

from molm3d_core.retrieval import IndexConfig, VectorIndex

GOAL = {"size": 1_000_000, "recall_at_20": 0.98, "p50_ms": 2.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="indexed vectors")
    p.add_argument("--dim", type=int, default=256, help="embedding size (small preset: 256)")
    p.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"], choices=["flat", "hnsw", "ivfpq"])
    p.add_argument("--queries", type=int, default=1000, help="queries for recall and ANN latency")
    p.add_argument("--flat-latency-queries", type=int, default=100, help="queries timed on the flat kind")
    p.add_argument("--data", choices=["latent", "isotropic"], default="latent")
    p.add_argument("--clusters", type=int, default=1024)
    p.add_argument("--intrinsic-dim", type=int, default=32)
    p.add_argument("--cluster-std", type=float, default=0.5, help="latent noise norm around unit centres")
    p.add_argument("--ambient-noise", type=float, default=0.1, help="isotropic noise norm added in 256-d")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--nlist", type=int, default=0, help="IVF cells (0: the power of two nearest 2 sqrt(N))")
    p.add_argument("--pq-m", type=int, default=32)
    p.add_argument("--nbits", type=int, default=8)
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--refine-factor", type=int, nargs="+", default=[4, 8], help="query-time k_factor values")
    p.add_argument("--budget-s", type=float, default=900.0, help="give up a build after this many seconds")
    p.add_argument("--build-threads", type=int, default=1,
                   help="FAISS threads for builds and the exact batch (default 1: OpenMP threads spin when the "
                   "cores are shared; 2 threads built HNSW 2x slower than 1 here under load)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="results JSON (default bench/results/retrieval_index.json)")
    return p.parse_args(argv)


class Synthetic:
    """Clustered unit vectors; `sample` draws from one fixed distribution (centres, map) per instance."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rng = args, np.random.default_rng(args.seed)
        latent = args.intrinsic_dim if args.data == "latent" else args.dim
        centres = self.rng.normal(size=(args.clusters, latent))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        q, _ = np.linalg.qr(self.rng.normal(size=(args.dim, latent)))  # (dim, latent) orthonormal columns
        self.basis = q.astype(np.float32)

    def sample(self, n: int, chunk: int = 100_000) -> np.ndarray:
        a, parts = self.args, []
        latent = self.centres.shape[1]
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = self.centres[self.rng.integers(0, len(self.centres), m)]
            z = z + a.cluster_std / math.sqrt(latent) * self.rng.normal(size=(m, latent))
            x = z.astype(np.float32) @ self.basis.T if a.data == "latent" else z.astype(np.float32)
            x += (a.ambient_noise / math.sqrt(a.dim) * self.rng.normal(size=(m, a.dim))).astype(np.float32)
            parts.append(x / np.linalg.norm(x, axis=1, keepdims=True))
        return np.concatenate(parts)


def auto_nlist(n: int) -> int:
    return 2 ** round(math.log2(2 * math.sqrt(n)))


def build(config: IndexConfig, vectors: np.ndarray, budget_s: float, chunk: int = 50_000) -> dict[str, Any]:
    """Add in chunks, checking the time budget between them; returns the index or how far it got."""
    index = VectorIndex(config, vectors.shape[1], 1)
    start = time.perf_counter()
    for lo in range(0, len(vectors), chunk):
        index.add(np.arange(lo, min(lo + chunk, len(vectors))), vectors[lo : lo + chunk])
        if time.perf_counter() - start > budget_s and lo + chunk < len(vectors):
            return {"index": None, "skipped": f"build passed {budget_s:.0f} s after {lo + chunk} vectors"}
    index.train()  # IVF-PQ with fewer vectors than its training sample trains here
    return {"index": index, "build_s": round(time.perf_counter() - start, 2)}


def latencies_ms(index: VectorIndex, queries: np.ndarray, k: int) -> np.ndarray:
    index.search(queries[:1], k)  # warm-up
    out = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[i : i + 1], k)
        out[i] = time.perf_counter() - t0
    return 1000 * out


def measure(index: VectorIndex, queries: np.ndarray, exact: np.ndarray, k: int, **params: Any) -> dict[str, Any]:
    index.set_search_params(**params)
    faiss.omp_set_num_threads(1)
    lat = latencies_ms(index, queries, k)
    _, ids = index.search(queries, k)
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact, strict=True)]))
    return {
        "params": params,
        "recall_at_20": round(recall, 4),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "mean_ms": round(float(lat.mean()), 3),
    }


def bench_size(n: int, args: argparse.Namespace, data: Synthetic, threads: int) -> dict[str, Any]:
    k = 20
    t0 = time.perf_counter()
    vectors, queries = data.sample(n), data.sample(args.queries)
    result: dict[str, Any] = {"data_seconds": round(time.perf_counter() - t0, 1)}
    faiss.omp_set_num_threads(threads)
    flat = build(IndexConfig(kind="flat", device="cpu"), vectors, args.budget_s)["index"]
    t0 = time.perf_counter()
    exact = flat.search(queries, k)[1]  # ground truth, batched
    result["exact_batch_seconds"] = round(time.perf_counter() - t0, 2)
    if "flat" in args.kinds:
        timed = queries[: args.flat_latency_queries]
        result["flat"] = {"settings": [measure(flat, timed, exact[: len(timed)], k)]}
        print(f"  flat   {result['flat']['settings'][0]}", flush=True)
    del flat
    gc.collect()

    nlist = args.nlist or auto_nlist(n)
    configs = {
        "hnsw": IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, device="cpu"),
        "ivfpq": IndexConfig(kind="ivfpq", nlist=nlist, pq_m=args.pq_m, nbits=args.nbits,
                             refine_factor=max(args.refine_factor), train_size=min(n, 64 * nlist), device="cpu"),
    }  # fmt: skip
    sweeps = {
        "hnsw": [{"ef_search": ef} for ef in args.ef_search],
        "ivfpq": [{"nprobe": p, "refine_factor": r} for p in args.nprobe for r in args.refine_factor],
    }
    for kind in ("hnsw", "ivfpq"):
        if kind not in args.kinds:
            continue
        faiss.omp_set_num_threads(threads)
        print(f"  building {kind} {configs[kind].to_dict()} ...", flush=True)
        built = build(configs[kind], vectors, args.budget_s)
        entry: dict[str, Any] = {"config": configs[kind].to_dict()}
        if built["index"] is None:
            entry["skipped"] = built["skipped"]
            print(f"  {kind}: {built['skipped']}", flush=True)
        else:
            entry["build_s"], entry["settings"] = built["build_s"], []
            for params in sweeps[kind]:
                entry["settings"].append(measure(built["index"], queries, exact, k, **params))
                print(f"  {kind:6s} build {built['build_s']} s  {entry['settings'][-1]}", flush=True)
        result[kind] = entry
        del built
        gc.collect()
    return result


def goal_check(results: dict[str, Any]) -> dict[str, Any]:
    """The fastest setting at the goal size that reaches the recall goal, per kind."""
    at = results.get(str(GOAL["size"]))
    if at is None:
        return {**GOAL, "measured": False, "note": f"{GOAL['size']} vectors not measured"}
    best: dict[str, Any] = {}
    for kind in ("flat", "hnsw", "ivfpq"):
        ok = [s for s in at.get(kind, {}).get("settings", []) if s["recall_at_20"] >= GOAL["recall_at_20"]]
        if ok:
            best[kind] = min(ok, key=lambda s: s["p50_ms"])
    met = any(s["p50_ms"] < GOAL["p50_ms"] for s in best.values())
    return {**GOAL, "measured": True, "met": met, "fastest_setting_reaching_recall": best}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warning = busy_warning()
    machine = machine_info()
    threads = args.build_threads
    data = Synthetic(args)
    results: dict[str, Any] = {}
    for n in args.sizes:
        print(f"{n} vectors x {args.dim} ({args.data}) ...", flush=True)
        results[str(n)] = bench_size(n, args, data, threads)
    payload = {
        "benchmark": "retrieval_index",
        "description": "recall@20 vs exact (flat) and single-query latency through VectorIndex.search, one FAISS "
        "thread per query, builds with --build-threads; synthetic clustered unit vectors (see parameters)",
        "date": now_iso(),
        "machine": {
            **machine,
            "faiss_version": faiss.__version__,
            "faiss_max_threads": faiss.omp_get_max_threads(),
            "load_average_at_end": machine_info()["load_average_1_5_15min"],
        },
        "parameters": {k: v for k, v in vars(args).items() if k != "output"},
        "warnings": [warning] if warning else [],
        "results": results,
        "goal": goal_check(results),
    }
    path = write_results("retrieval_index", payload, args.output)
    print(f"\nwrote {path}")
    print(f"goal ({GOAL}): {payload['goal']}")
    if warning:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

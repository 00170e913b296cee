"""Serving bench: the served stack vs the reference-style path, latency under load and overload, memory.

One stack (services/serve.yaml, continuous batching in the LM), measured in phases, side by side:
1. Unloaded: `--n-unloaded` captions one at a time (CaptionStream): time to first token, latency.
2. Throughput: `--n-served` unary captions with `--concurrency` - 1 in flight: captions/s vs the
   reference-style path on the same model in one process (batch 1, beam 5, no EOS stop: every caption
   runs to max_new_tokens). Goal >= 30x. Beside them, one streamed caption at a time: time to first
   token under this load, goal p50 <= 2x unloaded.
   Memory (PSS, /proc/PID/smaps_rollup) of the whole stack, the driver and every Ray process below
   it, after the load and its peak sampled every second. Goal <= 3 GB at peak.
3. Overload: open-loop arrivals at 4x the throughput of (2) for `--overload-s`, each with a deadline
   of 2x the unloaded p99. Goals: refusals (RESOURCE_EXHAUSTED) answer in < 100 ms, no admitted
   request times out (so admitted p99 <= 2x the unloaded p99), PSS flat.
4. LM tokens/s at batch 32 vs batch 1 (transformers' greedy generate, EOS disabled). Goal >= 8x.

Same checkpoint everywhere (default: the library default, see `molm3d caption --help`).

    .venv/bin/python bench/serving.py [--checkpoint DIR] [--n-served 96] [--overload-s 60] [--n-reference 4]

Writes bench/results/serving.json and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchlib import DEFAULT_SMILES, busy_warning, local_stack, machine_info, now_iso, read_smiles_file, write_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint folder (default: the library default)")
    p.add_argument("--n-served", type=int, default=96, help="captions through the served stack")
    p.add_argument("--n-unloaded", type=int, default=5, help="captions one at a time, for the unloaded latency")
    p.add_argument("--overload-s", type=float, default=60, help="seconds of arrivals at 4x the served rate")
    p.add_argument("--n-reference", type=int, default=4, help="captions on the reference-style path (slow)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight against the stack")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lm-batch", type=int, default=32, help="the large LM batch compared with batch 1")
    p.add_argument("--output", help="results file (default bench/results/serving.json)")
    return p.parse_args(argv)


def stack_pss_bytes(root_pid: int) -> tuple[int, dict[str, int]]:
    """(PSS bytes, PSS per process "pid name") of `root_pid` and all its descendants."""
    from molm3d_services.stack import process_tree

    pids = process_tree(root_pid)
    per_process: dict[str, int] = {}
    for pid in sorted(pids):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")[-60:]
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    per_process[f"{pid} {name}"] = int(line.split()[1]) * 1024
        except OSError:
            pass
    return sum(per_process.values()), per_process


class PeakPss:
    """The largest stack PSS seen while the block runs, sampled every `interval_s` in a thread."""

    def __init__(self, root_pid: int, interval_s: float = 1.0) -> None:
        self.root_pid, self.interval_s = root_pid, interval_s
        self.max_bytes, self.max_per_process = 0, {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            total, per_process = stack_pss_bytes(self.root_pid)
            if total > self.max_bytes:
                self.max_bytes, self.max_per_process = total, per_process

    def __enter__(self) -> PeakPss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def reference_style(model: Any, molecules: list[str], max_new_tokens: int) -> dict[str, Any]:
    """One molecule at a time, beam 5, no EOS stop (the reference's inference loop)."""
    import torch  # not at the top: see main()

    from molm3d_core.chem import ConformerOptions, collate, parse_smiles
    from molm3d_core.pipeline import prepare_molecule
    from molm3d_core.prompts import CAPTION_INSTRUCTION

    lm = model.lm
    start = time.perf_counter()
    tokens = 0
    for smiles in molecules:
        prepared = prepare_molecule(parse_smiles(smiles), ConformerOptions(), model.config.max_atoms)
        with torch.no_grad():
            mol = model.molecule_tokens(collate([prepared.features]))
            batch = lm.tokenize([model.prompt(CAPTION_INSTRUCTION, prepared.record.smiles)])
            embeds = lm.embed(batch.input_ids, mol)
            out = lm.model.generate(
                inputs_embeds=embeds,
                attention_mask=batch.attention_mask,
                num_beams=5,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
            )
        tokens += out.shape[1]
    seconds = time.perf_counter() - start
    return {
        "captions": len(molecules),
        "seconds": seconds,
        "captions_per_s": len(molecules) / seconds,
        "tokens": tokens,
    }


def lm_tokens_per_s(model: Any, batch_size: int, max_new_tokens: int, repeats: int = 2) -> dict[str, Any]:
    """Greedy decoding of `batch_size` caption prompts with EOS disabled."""
    import torch  # not at the top: see main()

    from molm3d_core.prompts import CAPTION_INSTRUCTION

    lm = model.lm
    prompts = [model.prompt(CAPTION_INSTRUCTION, "CC(=O)Oc1ccccc1C(=O)O")] * batch_size
    mol = torch.zeros(batch_size, model.num_query_tokens, lm.hidden_size) if model.config.molecule_tokens else None
    times = []
    for _ in range(repeats):
        batch = lm.tokenize(prompts)
        start = time.perf_counter()
        with torch.no_grad():
            out = lm.model.generate(
                inputs_embeds=lm.embed(batch.input_ids, mol),
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
            )
        times.append(time.perf_counter() - start)
        assert out.shape[1] == max_new_tokens
    seconds = statistics.median(times)
    return {
        "batch_size": batch_size,
        "new_tokens_per_row": max_new_tokens,
        "seconds_median": seconds,
        "tokens_per_s": batch_size * max_new_tokens / seconds,
    }


class Caller:
    """CaptionStream calls on one gRPC channel: (seconds to the first text, seconds to the answer, outcome)."""

    def __init__(self, target: str, max_new_tokens: int) -> None:
        import grpc
        from molm3d.v1 import gateway_pb2_grpc

        self.channel = grpc.insecure_channel(target, options=[("grpc.max_concurrent_streams", 1000)])
        self.stub = gateway_pb2_grpc.Molm3DServiceStub(self.channel)
        self.max_new_tokens = max_new_tokens

    def unary(self, smiles: str) -> dict[str, Any]:
        """One Caption call (the load): its outcome and seconds."""
        import grpc
        from molm3d.v1 import common_pb2, gateway_pb2

        request = gateway_pb2.CaptionRequest(
            molecule=common_pb2.MoleculeInput(text=smiles),
            decoding=common_pb2.DecodingOptions(max_new_tokens=self.max_new_tokens),
        )
        start = time.perf_counter()
        try:
            answer = self.stub.Caption(request, metadata=[("application", "gateway")], timeout=1800)
            status, tokens, reason = "OK", answer.num_tokens, answer.finish_reason
        except grpc.RpcError as err:
            status, tokens, reason = err.code().name, 0, ""
        return {"status": status, "ttft_s": None, "seconds": time.perf_counter() - start, "tokens": tokens,
                "finish_reason": reason}  # fmt: skip

    def caption(self, smiles: str, deadline_s: float | None = None) -> dict[str, Any]:
        import grpc
        from molm3d.v1 import common_pb2, gateway_pb2

        request = gateway_pb2.CaptionRequest(
            molecule=common_pb2.MoleculeInput(text=smiles),
            decoding=common_pb2.DecodingOptions(max_new_tokens=self.max_new_tokens),
        )
        metadata = [("application", "gateway")]
        if deadline_s is not None:
            metadata.append(("molm3d-timeout-ms", str(int(deadline_s * 1000))))
        start = time.perf_counter()
        first = None
        try:
            for chunk in self.stub.CaptionStream(request, metadata=metadata, timeout=1800):
                if first is None:
                    first = time.perf_counter() - start
                if chunk.HasField("answer"):
                    answer = chunk.answer
            status, tokens, reason = "OK", answer.num_tokens, answer.finish_reason
        except grpc.RpcError as err:
            status, tokens, reason = err.code().name, 0, ""
        return {"status": status, "ttft_s": first, "seconds": time.perf_counter() - start, "tokens": tokens,
                "finish_reason": reason}  # fmt: skip


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def served(args: argparse.Namespace, molecules: list[str]) -> dict[str, Any]:
    """Unloaded latency, then throughput at `concurrency`, then overload at 4x that throughput."""
    with local_stack(args.checkpoint) as target:
        caller = Caller(target, args.max_new_tokens)
        caller.caption(molecules[0])  # warm-up (first calls load lazily-initialised kernels)
        unloaded = [caller.caption(m) for m in molecules[: args.n_unloaded]]
        unloaded_p99 = quantile([r["seconds"] for r in unloaded], 0.99)

        # The load: unary Captions, `concurrency` - 1 in flight, and one streamed caption at a time beside
        # them whose time to first token is "under load".
        peak = PeakPss(os.getpid())
        probes: list[dict[str, Any]] = []
        start = time.perf_counter()
        with peak, ThreadPoolExecutor(args.concurrency - 1) as pool:
            futures = [pool.submit(caller.unary, m) for m in molecules]
            time.sleep(10)  # let the batch fill
            while not all(f.done() for f in futures):
                probes.append(caller.caption(molecules[len(probes) % len(molecules)]))
            loaded = [f.result() for f in futures]
        seconds = time.perf_counter() - start
        pss, per_process = stack_pss_bytes(os.getpid())
        ok = [r for r in loaded + probes if r["status"] == "OK"]
        throughput = {
            "captions": len(ok),
            "failed": len(loaded) + len(probes) - len(ok),
            "seconds": seconds,
            "captions_per_s": len(ok) / seconds,
            "concurrency": args.concurrency,
            "finish_reasons": {r: sum(a["finish_reason"] == r for a in ok) for r in ("eos", "length")},
            "mean_tokens": statistics.mean(a["tokens"] for a in ok),
            "ttft_p50_s": quantile([r["ttft_s"] for r in probes if r["ttft_s"] is not None], 0.5),
            "ttft_probes": len(probes),
            "latency_p50_s": quantile([r["seconds"] for r in ok], 0.5),
            "stack_pss_bytes": pss,
            "stack_pss_per_process": per_process,
            "stack_pss_peak_bytes": peak.max_bytes,
            "stack_pss_peak_per_process": peak.max_per_process,
        }
        overload = overloaded(caller, molecules, 4 * throughput["captions_per_s"], args.overload_s, 2 * unloaded_p99)
        caller.channel.close()
    return {
        "unloaded": {
            "captions": len(unloaded),
            "ttft_p50_s": quantile([r["ttft_s"] for r in unloaded], 0.5),
            "latency_p50_s": quantile([r["seconds"] for r in unloaded], 0.5),
            "latency_p99_s": unloaded_p99,
        },
        "throughput": throughput,
        "overload": overload,
    }


def overloaded(caller: Caller, molecules: list[str], rate: float, duration_s: float, deadline_s: float) -> dict:
    """Open-loop arrivals at `rate`/s for `duration_s`, each with a deadline of `deadline_s` (twice the
    unloaded p99): what admission control admits must answer in time, the rest be refused at once."""
    results: list[dict[str, Any]] = []
    pss_samples: list[int] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max(8, int(rate * deadline_s * 2) + 8)) as pool:
        futures, i = [], 0
        while (now := time.perf_counter() - start) < duration_s:
            if i <= now * rate:
                futures.append(pool.submit(caller.caption, molecules[i % len(molecules)], deadline_s))
                i += 1
                continue
            if not pss_samples or now - len(pss_samples) >= 0:  # about once a second
                pss_samples.append(stack_pss_bytes(os.getpid())[0])
            time.sleep(min(0.01, max(0.0, i / rate - now)))
        results = [f.result() for f in futures]
    admitted = [r for r in results if r["status"] != "RESOURCE_EXHAUSTED"]
    rejected = [r for r in results if r["status"] == "RESOURCE_EXHAUSTED"]
    return {
        "rate_per_s": rate,
        "seconds": duration_s,
        "deadline_s": deadline_s,
        "sent": len(results),
        "answered": sum(r["status"] == "OK" for r in results),
        "rejected": len(rejected),
        "admitted_timed_out": sum(r["status"] == "DEADLINE_EXCEEDED" for r in admitted),
        "other_errors": sorted({r["status"] for r in admitted} - {"OK", "DEADLINE_EXCEEDED"}),
        "rejection_p99_s": quantile([r["seconds"] for r in rejected], 0.99),
        "admitted_p50_s": quantile([r["seconds"] for r in admitted if r["status"] == "OK"], 0.5),
        "admitted_p99_s": quantile([r["seconds"] for r in admitted if r["status"] == "OK"], 0.99),
        "ttft_p50_s": quantile([r["ttft_s"] for r in admitted if r["ttft_s"] is not None], 0.5),
        "stack_pss_first_last_max_bytes": [pss_samples[0], pss_samples[-1], max(pss_samples)] if pss_samples else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warning = busy_warning()
    smiles = [s for s, _ in read_smiles_file(DEFAULT_SMILES)]
    served_molecules = [smiles[i % len(smiles)] for i in range(args.n_served)]
    print(f"served stack: {args.n_served} captions, {args.concurrency} in flight, then overload ...", file=sys.stderr)
    stack = served(args, served_molecules)
    stack_result = stack["throughput"]

    # Imported only now: the stack's PSS includes this process (it is the Ray driver, as `molm3d serve`
    # is), and `molm3d serve` never imports torch or the model.
    from molm3d_core.checkpoints import load_model

    model, info = load_model(args.checkpoint, device="cpu")
    print(f"reference-style path: {args.n_reference} captions ...", file=sys.stderr)
    reference = reference_style(model, smiles[: args.n_reference], args.max_new_tokens)
    print("LM tokens/s at batch 1 and batch", args.lm_batch, "...", file=sys.stderr)
    lm1 = lm_tokens_per_s(model, 1, args.max_new_tokens)
    lmb = lm_tokens_per_s(model, args.lm_batch, args.max_new_tokens)

    results = {
        "bench": "serving",
        "measured_at": now_iso(),
        "machine": machine_info(),
        "model_id": info.model_id,
        "model_trained": info.trained,
        "max_new_tokens": args.max_new_tokens,
        "served": stack_result,
        "unloaded": stack["unloaded"],
        "overload": stack["overload"],
        "ttft_loaded_vs_unloaded": stack_result["ttft_p50_s"] / stack["unloaded"]["ttft_p50_s"],
        "reference_style": reference,
        "speedup_served_vs_reference": stack_result["captions_per_s"] / reference["captions_per_s"],
        "lm_batch_1": lm1,
        f"lm_batch_{args.lm_batch}": lmb,
        "lm_batching_ratio": lmb["tokens_per_s"] / lm1["tokens_per_s"],
        "stack_pss_gib": stack_result["stack_pss_bytes"] / 2**30,
        "stack_pss_peak_gib": stack_result["stack_pss_peak_bytes"] / 2**30,
        "goals": {
            "speedup_served_vs_reference": 30,
            "lm_batching_ratio": 8,
            "stack_pss_peak_gb_max": 3,
            "ttft_loaded_vs_unloaded_max": 2,
            "overload_rejection_p99_s_max": 0.1,
            "overload_admitted_p99_max": "2x unloaded p99 (the deadline sent)",
            "overload_admitted_timed_out": 0,
        },
        "warning": warning,
    }
    path = write_results("serving", results, args.output)
    print(
        f"served {stack_result['captions_per_s']:.2f} captions/s vs reference-style "
        f"{reference['captions_per_s']:.3f} ({results['speedup_served_vs_reference']:.1f}x); "
        f"LM {lm1['tokens_per_s']:.1f} tok/s at batch 1 vs {lmb['tokens_per_s']:.1f} at batch {args.lm_batch} "
        f"({results['lm_batching_ratio']:.1f}x); stack PSS {results['stack_pss_gib']:.2f} GiB after the load, "
        f"{results['stack_pss_peak_gib']:.2f} GiB at peak; TTFT p50 {stack_result['ttft_p50_s']:.2f} s loaded vs "
        f"{stack['unloaded']['ttft_p50_s']:.2f} s unloaded; overload: {stack['overload']} -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving bench: the served stack vs the reference-style path, LM batching, memory of the stack.

1. End-to-end captions/s through the served stack (gRPC gateway, `--concurrency` requests in flight,
   greedy, EOS stop, dynamic batching) vs the reference-style path on the same model in one process
   (batch 1, beam 5, no EOS stop: every caption runs to max_new_tokens). Goal >= 10x.
2. LM tokens/s at batch 32 vs batch 1 (greedy, EOS disabled so every row makes max_new_tokens). Goal >= 8x.
3. Memory (PSS, /proc/PID/smaps_rollup) of the whole local stack: the driver and every Ray process
   below it, after the load of (1), and the peak sampled every second during it. Goal <= 3 GB.

Same checkpoint everywhere (default: the library default, see `molm3d caption --help`).

    .venv/bin/python bench/serving.py [--checkpoint DIR] [--n-served 32] [--n-reference 4]

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
    p.add_argument("--n-served", type=int, default=32, help="captions through the served stack")
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


def served(args: argparse.Namespace, molecules: list[str]) -> dict[str, Any]:
    from molm3d.v1 import common_pb2

    from molm3d_services.client import GatewayClient

    gateway = {"Gateway": {"user_config": {"request_timeout_s": 1800}}}
    with local_stack(args.checkpoint, deployments=gateway) as target:
        client = GatewayClient(target, timeout_s=600)

        def caption(smiles: str) -> Any:
            return client.caption(common_pb2.MoleculeInput(text=smiles), max_new_tokens=args.max_new_tokens)

        caption(molecules[0])  # warm-up (first calls load lazily-initialised kernels)
        peak = PeakPss(os.getpid())
        start = time.perf_counter()
        with peak, ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(caption, molecules))
        seconds = time.perf_counter() - start
        pss, per_process = stack_pss_bytes(os.getpid())
        client.close()
    return {
        "captions": len(answers),
        "seconds": seconds,
        "captions_per_s": len(answers) / seconds,
        "concurrency": args.concurrency,
        "finish_reasons": {r: sum(a.finish_reason == r for a in answers) for r in ("eos", "length")},
        "mean_tokens": statistics.mean(a.num_tokens for a in answers),
        "stack_pss_bytes": pss,
        "stack_pss_per_process": per_process,
        "stack_pss_peak_bytes": peak.max_bytes,
        "stack_pss_peak_per_process": peak.max_per_process,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warning = busy_warning()
    smiles = [s for s, _ in read_smiles_file(DEFAULT_SMILES)]
    served_molecules = [smiles[i % len(smiles)] for i in range(args.n_served)]
    print(f"served stack: {args.n_served} captions, {args.concurrency} in flight ...", file=sys.stderr)
    stack_result = served(args, served_molecules)

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
        "reference_style": reference,
        "speedup_served_vs_reference": stack_result["captions_per_s"] / reference["captions_per_s"],
        "lm_batch_1": lm1,
        f"lm_batch_{args.lm_batch}": lmb,
        "lm_batching_ratio": lmb["tokens_per_s"] / lm1["tokens_per_s"],
        "stack_pss_gib": stack_result["stack_pss_bytes"] / 2**30,
        "stack_pss_peak_gib": stack_result["stack_pss_peak_bytes"] / 2**30,
        "goals": {"speedup_served_vs_reference": 10, "lm_batching_ratio": 8, "stack_pss_gib_max": 3},
        "warning": warning,
    }
    path = write_results("serving", results, args.output)
    print(
        f"served {stack_result['captions_per_s']:.2f} captions/s vs reference-style "
        f"{reference['captions_per_s']:.3f} ({results['speedup_served_vs_reference']:.1f}x); "
        f"LM {lm1['tokens_per_s']:.1f} tok/s at batch 1 vs {lmb['tokens_per_s']:.1f} at batch {args.lm_batch} "
        f"({results['lm_batching_ratio']:.1f}x); stack PSS {results['stack_pss_gib']:.2f} GiB after the load, "
        f"{results['stack_pss_peak_gib']:.2f} GiB at peak -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

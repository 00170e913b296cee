"""Bulk bench: Kafka bulk jobs against direct calls, and a crash drill.

1. Throughput: `--n` molecules as one bulk embed job through Kafka (submit -> workers -> results topic,
   timed until every item has its result) vs `--n` other molecules of the same kind sent straight to
   the gateway (gRPC Embed, as many calls in flight as a worker keeps: max_batch x in-flight batches).
   Same stack, same run; the two molecule sets are disjoint halves of one QM9 sample, so neither run
   profits from the other's conformer cache. Goal: ratio >= 0.9.
2. Crash drill: a `--n-drill` molecule embed job while the bulk worker replica is SIGKILLed three times
   and the broker (Tansu, rclone, s3 guard) once; then count results: total / lost / duplicated in
   `bulk fetch` (goal n / 0 / 0), and how many redelivered records the readers dropped.

    .venv/bin/python bench/bulk.py [--n 2000] [--n-drill 10000] [--checkpoint DIR]

Writes bench/results/bulk.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import busy_warning, local_stack, machine_info, now_iso, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.broker: the broker launcher's wrapper

from tests.broker import Broker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="molecules per throughput run")
    p.add_argument("--n-drill", type=int, default=10_000, help="molecules in the crash drill")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the library default)")
    p.add_argument("--output", help="results file (default bench/results/bulk.json)")
    return p.parse_args(argv)


def qm9_sample(n: int, seed: int = 0) -> list[str]:
    from molm3d_core.data.qm9 import QM9_FILES, qm9_data_dir

    smiles = []
    for name in QM9_FILES:
        with open(qm9_data_dir() / name) as f:
            smiles += [row["SMILES"] for row in csv.DictReader(f)]
    return random.Random(seed).sample(smiles, n)


def write_job(path: Path, smiles: list[str]) -> None:
    path.write_text("".join(f"{s} m{i}\n" for i, s in enumerate(smiles)))


async def direct(target: str, smiles: list[str], concurrency: int) -> float:
    """Seconds to embed every molecule through the gateway with `concurrency` calls in flight."""
    import grpc
    from molm3d.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = gateway_pb2_grpc.Molm3DServiceStub(channel)
        metadata = [("application", "gateway")]
        queue = list(enumerate(smiles))
        failures = 0

        async def worker() -> None:
            nonlocal failures
            while queue:
                _, s = queue.pop()
                try:
                    await stub.Embed(
                        gateway_pb2.EmbedRequest(molecule=common_pb2.MoleculeInput(text=s)), metadata=metadata
                    )
                except grpc.RpcError:
                    failures += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    if failures:
        print(f"direct: {failures} calls failed", file=sys.stderr)
    return seconds


def follow(settings: Any, job: str, timeout_s: float = 3600, on_progress: Any = None) -> Any:
    """Read the job until complete; `on_progress(state)` after each read."""
    from molm3d_services.bulk.jobs import JobReader

    reader = JobReader(settings, job)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            state = reader.update()
            if on_progress:
                on_progress(state)
            if state.complete or time.monotonic() > deadline:
                return state
            time.sleep(0.2)
    finally:
        reader.close()


def kafka_run(settings: Any, path: Path) -> tuple[float, Any]:
    from molm3d_services.bulk.jobs import submit

    start = time.perf_counter()
    job, _ = submit(settings, [str(path)], "embed")
    state = follow(settings, job)
    return time.perf_counter() - start, state


def drill(settings: Any, broker: Broker, path: Path, n: int) -> dict[str, Any]:
    """The crash drill: worker killed at 20/40/70 % done, broker killed and restarted at 55 %."""
    import signal

    from molm3d_services.bulk.jobs import submit

    events: list[dict[str, Any]] = []
    kill_worker_at, restart_broker_at = [0.2, 0.4, 0.7], 0.55
    killed: set[str] = set()
    start = time.perf_counter()
    job, _ = submit(settings, [str(path)], "embed")

    def on_progress(state: Any) -> None:
        nonlocal restart_broker_at
        fraction = (state.done + state.failed) / n
        if kill_worker_at and fraction >= kill_worker_at[0]:
            latest = max(state.results.values(), key=lambda r: r.finished_at).worker
            if latest in killed:
                return  # wait for the replacement replica to answer something
            os.kill(int(latest.rsplit(":", 1)[1]), signal.SIGKILL)
            killed.add(latest)
            events.append(
                {"event": "worker SIGKILL", "worker": latest, "done": state.done, "t": time.perf_counter() - start}
            )
            kill_worker_at.pop(0)
        if restart_broker_at is not None and fraction >= restart_broker_at:
            broker.kill()
            events.append({"event": "broker SIGKILL", "done": state.done, "t": time.perf_counter() - start})
            time.sleep(2)
            broker.up()
            events.append({"event": "broker up", "t": time.perf_counter() - start})
            restart_broker_at = None
            raise _Reconnect

    while True:
        try:
            state = follow(settings, job, on_progress=on_progress)
            break
        except _Reconnect:  # the reader's connection died with the broker: read again from the start
            continue
        except Exception as exc:  # broker still coming up
            events.append({"event": f"reader retry ({type(exc).__name__})", "t": time.perf_counter() - start})
            time.sleep(2)
    seconds = time.perf_counter() - start
    # What a user gets: `molm3d bulk fetch`, counted line by line against the input.
    out = path.with_suffix(".out.jsonl")
    env = {**os.environ, "MOLM3D_KAFKA_BOOTSTRAP": settings.bootstrap}
    cmd = [sys.executable, "-m", "molm3d_core.cli.main", "bulk", "fetch", job, "-o", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    failures = [json.loads(line) for line in out.with_suffix(".failures.jsonl").read_text().splitlines()]
    answered = [r["index"] for r in rows] + [f["index"] for f in failures if f["index"] is not None]
    return {
        "job_id": job,
        "items": n,
        "results": len(rows),
        "failed": len(failures),
        "lost": n - len(set(answered)),
        "duplicated_in_fetch": len(answered) - len(set(answered)),
        "in_input_order": [r["index"] for r in rows] == sorted(r["index"] for r in rows),
        "redelivered_records_dropped": state.duplicates,
        "worker_replicas_seen": len({r["worker"] for r in rows}),
        "seconds": seconds,
        "events": events,
    }


class _Reconnect(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from molm3d_services.bulk.config import KafkaSettings

    warning = busy_warning()
    tmp = Path(tempfile.mkdtemp(prefix="molm3d-bulk-bench-"))
    broker = Broker(tmp / "kafka")
    broker.up()
    settings = KafkaSettings(bootstrap=broker.bootstrap, session_timeout_ms=6000)
    max_batch, in_flight = 32, 2
    worker = {"kafka": {"bootstrap": broker.bootstrap, "session_timeout_ms": 6000},
              "max_batch": max_batch, "max_in_flight_batches": in_flight}  # fmt: skip
    sample = qm9_sample(2 * args.n + args.n_drill)
    direct_smiles, kafka_smiles, drill_smiles = sample[: args.n], sample[args.n : 2 * args.n], sample[2 * args.n :]
    write_job(tmp / "throughput.smi", kafka_smiles)
    write_job(tmp / "drill.smi", drill_smiles)
    try:
        with local_stack(
            args.checkpoint, kafka=broker.bootstrap, deployments={"BulkWorker": {"user_config": worker}}
        ) as target:
            asyncio.run(direct(target, direct_smiles[:64], max_batch * in_flight))  # warm-up
            print(f"direct: {args.n} embeds, {max_batch * in_flight} in flight ...", file=sys.stderr)
            direct_s = asyncio.run(direct(target, direct_smiles, max_batch * in_flight))
            print(f"kafka: one job of {args.n} embeds ...", file=sys.stderr)
            kafka_s, state = kafka_run(settings, tmp / "throughput.smi")
            print(f"crash drill: {args.n_drill} embeds, worker killed 3x, broker restarted once ...", file=sys.stderr)
            drill_result = drill(settings, broker, tmp / "drill.smi", args.n_drill)
    finally:
        broker.down()
    results = {
        "bench": "bulk",
        "measured_at": now_iso(),
        "machine": machine_info(),
        "busy_warning": warning,
        "task": "embed",
        "throughput": {
            "molecules": args.n,
            "direct_seconds": direct_s,
            "direct_per_s": args.n / direct_s,
            "kafka_seconds": kafka_s,
            "kafka_per_s": args.n / kafka_s,
            "kafka_failed": state.failed,
            "ratio_kafka_over_direct": direct_s / kafka_s,
            "goal": ">= 0.9",
        },
        "crash_drill": {**drill_result, "goal": f"{args.n_drill} / 0 / 0"},
    }
    write_results("bulk", results, args.output)
    t, d = results["throughput"], results["crash_drill"]
    print(
        f"throughput: kafka {t['kafka_per_s']:.1f}/s vs direct {t['direct_per_s']:.1f}/s = "
        f"{t['ratio_kafka_over_direct']:.2f} (goal >= 0.9)\n"
        f"crash drill: {d['results']} results, {d['lost']} lost, {d['duplicated_in_fetch']} duplicated "
        f"({d['redelivered_records_dropped']} redelivered records dropped; {d['worker_replicas_seen']} worker replicas)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

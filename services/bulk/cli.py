"""`molm3d bulk submit | status | fetch | worker`: bulk annotation jobs over Kafka."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .outputs import OUTPUT_FORMATS


def add_bulk_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bulk",
        help="bulk annotation jobs over Kafka (submit, status, fetch, worker)",
        description="A job is a file of molecules and a task. `submit` writes one item per molecule to the "
        "jobs topic; workers (`molm3d serve --kafka`, or `molm3d bulk worker`) answer them through "
        "the served pipeline; `fetch` returns each item once, in input order. Kafka settings: --kafka "
        "or MOLM3D_KAFKA_BOOTSTRAP, and MOLM3D_KAFKA_* for security and topic names.",
    )
    bulk = p.add_subparsers(dest="bulk_command", required=True)

    def kafka_option(q: argparse.ArgumentParser) -> None:
        q.add_argument("--kafka", help="broker HOST:PORT[,...] (default: $MOLM3D_KAFKA_BOOTSTRAP)")

    q = bulk.add_parser("submit", help="submit a file of molecules as a job; prints the job id last")
    q.add_argument("inputs", nargs="+", help="files (.smi .sdf .mol .xyz .pdb) or SMILES strings")
    q.add_argument("--task", required=True, choices=("caption", "ask", "embed"))
    q.add_argument("--question", default="", help="the question (task ask)")
    q.add_argument("--job-id", help="default: a new random id")
    q.add_argument("--max-new-tokens", type=int, default=0, help="0 = server default")
    q.add_argument("--beams", type=int, default=0, help="0 = server default (greedy)")
    q.add_argument("--max-items", type=int, default=None, help="refuse bigger jobs (default 1,000,000)")
    kafka_option(q)
    q.set_defaults(handler=run_submit)

    q = bulk.add_parser("status", help="done / failed / pending of a job")
    q.add_argument("job_id")
    q.add_argument("--wait", action="store_true", help="block with a progress bar until complete (exit 0)")
    q.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 1)")
    kafka_option(q)
    q.set_defaults(handler=run_status)

    q = bulk.add_parser("fetch", help="write a job's results once per item, in input order")
    q.add_argument("job_id")
    q.add_argument("-o", "--output", required=True, help="results file (.jsonl, .csv or .sdf)")
    q.add_argument("--format", choices=OUTPUT_FORMATS, help="default: from the output's extension")
    q.add_argument("--failures", help="failed items as JSON lines (default: OUTPUT with .failures.jsonl)")
    kafka_option(q)
    q.set_defaults(handler=run_fetch)

    q = bulk.add_parser("worker", help="a bulk worker outside Ray, answering through a gateway over gRPC")
    q.add_argument("--gateway", required=True, help="gateway gRPC HOST:PORT (token: $MOLM3D_API_TOKEN)")
    q.add_argument("--max-batch", type=int, default=32)
    q.add_argument("--max-in-flight-batches", type=int, default=2)
    q.add_argument("--health-port", type=int, help="serve GET /healthz and /metrics on this port")
    q.add_argument("--health-host", default="127.0.0.1", help="bind address of /healthz (in a pod: 0.0.0.0)")
    kafka_option(q)
    q.set_defaults(handler=run_worker)


def _kafka_errors(handler: Any) -> Any:
    """Broker trouble as a one-line CLI error (exit 2), not a traceback."""

    def run(args: argparse.Namespace) -> int:
        import logging

        from kafka.errors import KafkaError

        if getattr(args, "log_level", "info").upper() != "DEBUG":  # kafka-python logs every retry
            logging.getLogger("kafka").setLevel(logging.CRITICAL)
        try:
            return handler(args)
        except KafkaError as err:
            raise ValueError(f"Kafka ({args.kafka or 'MOLM3D_KAFKA_BOOTSTRAP'}): {type(err).__name__}: {err}") from None

    return run


def _settings(args: argparse.Namespace):
    from .config import KafkaSettings

    settings = KafkaSettings.from_env().with_bootstrap(args.kafka)
    settings.client_options()  # raises the "no broker configured" error early
    return settings


@_kafka_errors
def run_submit(args: argparse.Namespace) -> int:
    from molm3d.v1 import common_pb2

    from .jobs import MAX_JOB_ITEMS, submit

    decoding = common_pb2.DecodingOptions(max_new_tokens=args.max_new_tokens, num_beams=args.beams)
    job_id, total = submit(
        _settings(args),
        args.inputs,
        args.task,
        question=args.question,
        decoding=decoding,
        job_id=args.job_id,
        max_items=args.max_items or MAX_JOB_ITEMS,
        progress=sys.stderr.isatty(),
    )
    print(f"submitted {total} molecules", file=sys.stderr)
    print(job_id)
    return 0


@_kafka_errors
def run_status(args: argparse.Namespace) -> int:
    from .jobs import JobReader, wait

    reader = JobReader(_settings(args), args.job_id)
    try:
        state = wait(reader, args.timeout, progress=True) if args.wait else reader.update()
    finally:
        reader.close()
    if not state.known:
        print(f"{args.job_id}: no record of this job on the results or DLQ topic (yet)", file=sys.stderr)
        return 1
    print(state.summary())
    return 0 if (state.complete or not args.wait) else 1


@_kafka_errors
def run_fetch(args: argparse.Namespace) -> int:
    from .jobs import JobReader, failure_rows, result_rows

    fmt = args.format or Path(args.output).suffix.lstrip(".").lower()
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"cannot tell the output format from {args.output!r}; use --format {OUTPUT_FORMATS}")
    reader = JobReader(_settings(args), args.job_id)
    try:
        state = reader.update()
    finally:
        reader.close()
    if not state.known:
        print(f"{args.job_id}: no record of this job on the results or DLQ topic (yet)", file=sys.stderr)
        return 1
    rows = list(result_rows(state))
    _write(rows, args.output, fmt)
    failures_path = args.failures or str(Path(args.output).with_suffix(".failures.jsonl"))
    failures = list(failure_rows(state))
    _write(failures, failures_path, "jsonl")
    print(f"{state.summary()}; {len(rows)} results -> {args.output}, {len(failures)} failures -> {failures_path}",
          file=sys.stderr)  # fmt: skip
    if state.total is None:
        print("no decodable item of this job arrived: its undecodable records are the failures", file=sys.stderr)
        return 1
    if not state.complete:
        print(f"incomplete: {state.pending} items pending; fetch again later or `bulk status --wait`", file=sys.stderr)
        return 1
    return 0


def _write(rows: list[dict[str, Any]], path: str, fmt: str) -> None:
    from .outputs import write_rows

    with open(path, "w", newline="") as out:
        write_rows(rows, out, fmt)


@_kafka_errors
def run_worker(args: argparse.Namespace) -> int:
    from prometheus_client import Counter

    from .worker import BulkWorker, GrpcPipeline, WorkerOptions

    items = Counter("molm3d_bulk_items", "bulk items answered (ok) or dead-lettered", ["outcome"])

    def observe(outcome: Any) -> None:
        items.labels("ok").inc(outcome.ok)
        items.labels("failed").inc(outcome.failed)

    options = WorkerOptions(max_batch=args.max_batch, max_in_flight_batches=args.max_in_flight_batches)
    worker = BulkWorker(_settings(args), GrpcPipeline(args.gateway), options, on_batch=observe)
    if args.health_port:
        _serve_health(worker, args.health_host, args.health_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    asyncio.run(main())
    return 0


def _serve_health(worker: Any, host: str, port: int, stale_s: float = 120) -> None:
    """GET /healthz: 200 while the consumer loop turns (polled within `stale_s`), else 503.
    GET /metrics: Prometheus text (molm3d_bulk_items_total{outcome})."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body = generate_latest()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path != "/healthz":
                self.send_response(404)
            else:
                self.send_response(200 if time.monotonic() - worker.last_poll < stale_s else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()

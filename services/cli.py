"""`molm3d serve`: the local stack on the embedded defaults, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the serving stack locally (Ray Serve; gRPC :9000, HTTP :8000)",
        description="Starts Ray (no dashboard) and every stage of the Serve config; stops cleanly "
        "on Ctrl-C or SIGTERM. HTTP, gRPC and every Ray port bind 127.0.0.1 unless --http-host "
        "says otherwise (then set MOLM3D_API_TOKEN: every public call needs it).",
    )
    p.add_argument("--config", help="Serve config YAML (default: the packaged services/serve.yaml)")
    p.add_argument("--checkpoint", help="checkpoint folder for encoder, lm and retrieval (default: library default)")
    p.add_argument("--molecule-index", help="index folder searched by text (default: the example library)")
    p.add_argument("--text-index", help="index folder searched by molecule (default: the example library)")
    p.add_argument("--http-host", help="HTTP bind address (default from the config: 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port (default from the config: 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default from the config: 9000)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics of all stages (default 8080)")
    p.add_argument("--kafka", help="also run bulk workers consuming from this broker (HOST:PORT[,...])")
    p.add_argument("--num-cpus", type=int, help="logical CPUs for the local Ray node (default max(4, cores))")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from . import stack

    config = stack.override(
        stack.load_config(args.config),
        http_host=args.http_host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        checkpoint=args.checkpoint,
        molecule_index=args.molecule_index,
        text_index=args.text_index,
        kafka=args.kafka,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    def install_handlers() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    install_handlers()
    try:
        print("starting Ray Serve ...", file=sys.stderr)
        stack.start(config, num_cpus=args.num_cpus, metrics_port=args.metrics_port)
        install_handlers()  # again: ray.init installs its own SIGTERM handler, which aborts the driver
        stack.wait_ready(config)
        http, grpc_port = config["http_options"], config["grpc_options"]["port"]
        print(
            f"ready: gRPC {http['host']}:{grpc_port} (metadata application=gateway), HTTP http://{http['host']}:"
            f"{http['port']}/v1/health/ready, metrics :{args.metrics_port}/metrics; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(1.0):  # a timed wait lets Python run the signal handler promptly
            pass
        print("stopping ...", file=sys.stderr)
    finally:
        stack.stop()
    return 0

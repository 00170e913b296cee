"""Shared helpers of the benchmark scripts: the molecule list, machine facts, the results file, and
the local serving stack."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_SMILES = BENCH_DIR / "data" / "druglike.smi"
RESULTS_DIR = BENCH_DIR / "results"


def read_smiles_file(path: str | Path) -> list[tuple[str, str]]:
    """(SMILES, name) per line of a "SMILES name" file; blank lines and "#" comments skipped."""
    entries = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        entries.append((parts[0], parts[1] if len(parts) > 1 else f"line{lineno}"))
    return entries


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on; torch facts only when torch is already imported."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average_1_5_15min": load_average(),
    }
    try:
        from rdkit import rdBase

        info["rdkit_version"] = rdBase.rdkitVersion
    except ImportError:
        pass
    if "torch" in sys.modules:
        import torch

        info["torch_version"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_results(name: str, payload: dict[str, Any], output: str | Path | None = None) -> Path:
    path = Path(output) if output else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def busy_warning(threshold: float | None = None) -> str | None:
    """A warning when other work is loading the machine (timings would be unreliable)."""
    load = load_average()
    cpus = os.cpu_count() or 1
    limit = threshold if threshold is not None else 0.5 * cpus
    if load is not None and load[0] > limit:
        return f"1-minute load average is {load[0]} on {cpus} CPUs: other processes may distort the timings"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_stack(checkpoint: str | None = None, **overrides: Any) -> Iterator[str]:
    """The served stack of services/serve.yaml on free ports (Ray started here, no dashboard): yields the
    gRPC target once every application is RUNNING, and stops it all on exit. `overrides` go to
    `stack.override` (kafka=, deployments=, ...)."""
    from molm3d_services import stack

    grpc_port = free_port()
    config = stack.override(stack.load_config(), http_port=free_port(), grpc_port=grpc_port,
                            checkpoint=checkpoint or "", **overrides)  # fmt: skip
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    stack.start(config)
    try:
        stack.wait_ready(config)
        yield f"127.0.0.1:{grpc_port}"
    finally:
        stack.stop()

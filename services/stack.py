"""Start and stop the local stack from a Serve config (serve.yaml): Ray without dashboard, Serve's
HTTP and gRPC proxies, every application; `wait_ready` returns once all are RUNNING.

Local by default: when the HTTP host is a loopback address (serve.yaml: 127.0.0.1), every port of the
stack listens on it only (services/README.md lists them). Ray's own servers (GCS, raylet, object
manager, workers, metrics and dashboard agents) bind the node's IP, which Ray's single-machine mode
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the default on macOS and Windows) makes 127.0.0.1; Serve's gRPC
servers get it from common/serve_patches.py, which every Ray worker applies first. Any other HTTP host
(`molm3d serve --http-host 0.0.0.0`) leaves Ray and Serve on their defaults: every interface, Ray's
RPCs guarded by its token (RAY_AUTH_MODE=token, Ray's default for a new local cluster) and the API by
$MOLM3D_API_TOKEN.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("molm3d.services")
DEFAULT_CONFIG = Path(__file__).with_name("serve.yaml")
BULK_IMPORT_PREFIX = "molm3d_services.bulk."  # applications of Kafka consumers: deployed with a broker only


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    return yaml.safe_load(Path(path or DEFAULT_CONFIG).read_text())


def override(
    config: dict[str, Any],
    *,
    http_host: str | None = None,
    http_port: int | None = None,
    grpc_port: int | None = None,
    checkpoint: str | None = None,
    molecule_index: str | None = None,
    text_index: str | None = None,
    kafka: str | None = None,
    deployments: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A copy of `config` with command-line overrides: what runs. `deployments` maps a deployment name
    to options set on it (`user_config` entries are merged key by key). `kafka` is the broker of every
    deployment with a `kafka` user_config: the bulk workers and the gateway (its HTTP bulk routes). The
    bulk application stays only when a Kafka broker is configured (`kafka`, its user_config, or
    $MOLM3D_KAFKA_BOOTSTRAP)."""
    config = copy.deepcopy(config)
    if http_host is not None:
        config["http_options"]["host"] = http_host
    if http_port is not None:
        config["http_options"]["port"] = http_port
    if grpc_port is not None:
        config["grpc_options"]["port"] = grpc_port
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            uc = dep.setdefault("user_config", {})
            if checkpoint is not None and "checkpoint" in uc:
                uc["checkpoint"] = checkpoint
            for key, value in (("molecule_index", molecule_index), ("text_index", text_index)):
                if value is not None and key in uc:
                    uc[key] = value
            if kafka is not None and "kafka" in uc:
                uc["kafka"] = {**uc["kafka"], "bootstrap": kafka}
            extra = copy.deepcopy((deployments or {}).get(dep["name"], {}))
            uc.update(extra.pop("user_config", {}))
            dep.update(extra)
    config["applications"] = [app for app in config["applications"] if not _idle_bulk(app)]
    return config


def _idle_bulk(app: dict[str, Any]) -> bool:
    """An application of Kafka consumers (services/bulk) with no broker to consume from. (The gateway
    has Kafka settings too, and stays: without a broker its bulk routes answer 503.)"""
    if not app.get("import_path", "").startswith(BULK_IMPORT_PREFIX):
        return False
    configs = [dep.get("user_config", {}).get("kafka") or {} for dep in app.get("deployments", [])]
    return not any(c.get("bootstrap") or os.environ.get("MOLM3D_KAFKA_BOOTSTRAP") for c in configs)


def start(config: dict[str, Any], num_cpus: int | None = None, metrics_port: int | None = None) -> None:
    """Start Ray (local, no dashboard) and Serve, and submit every application."""
    import ray
    from ray.serve._private import api as serve_api
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    from .common import serve_patches

    schema = ServeDeploySchema.model_validate(config)
    if not ray.is_initialized():
        # Every Ray worker (Serve's controller, proxies, replicas) imports serve_preload first, which
        # applies serve_patches. Ray's processes inherit this environment.
        preload = [m for m in os.environ.get(serve_patches.PRELOAD_ENV, "").split(",") if m]
        os.environ[serve_patches.PRELOAD_ENV] = ",".join(dict.fromkeys([*preload, serve_patches.PRELOAD_MODULE]))
        host = config["http_options"].get("host") or ""
        if serve_patches.is_loopback(host):
            local_only_ray()
            os.environ[serve_patches.GRPC_HOST_ENV] = host
        else:
            os.environ.pop(serve_patches.GRPC_HOST_ENV, None)
        # Logical CPUs: Serve's fractional num_cpus are scheduling hints, not core pinning.
        # Prometheus metrics of every stage are scraped from Ray's metrics agent on `metrics_port`.
        ray.init(
            include_dashboard=False,
            namespace="serve",
            num_cpus=num_cpus or max(4, os.cpu_count() or 1),
            _metrics_export_port=metrics_port,
            log_to_driver=os.environ.get("MOLM3D_RAY_LOGS", "0") == "1",
        )
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema)


def local_only_ray() -> None:
    """Ray's single-machine mode: the node's IP is 127.0.0.1, so that its GCS, raylet, object manager,
    workers and agents listen there. Set for this process (Ray reads it on import, hence the module
    attribute as well) and inherited by every process Ray starts from here. A process that attaches
    to such a stack (`ray.init(address=...)`) needs it too, or Ray looks for a raylet at the machine's
    network address."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def wait_ready(config: dict[str, Any], timeout_s: float = 600) -> None:
    """Block until every application is RUNNING; RuntimeError naming the failed one otherwise."""
    from ray import serve

    names = [a["name"] for a in config["applications"]]
    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: (apps[n].status if n in apps else "NOT_STARTED") for n in names}
        failed = {n: apps[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"applications failed to deploy: {failed}")
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications not ready after {timeout_s:.0f} s: {states}")
        time.sleep(0.5)


def stop() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def process_tree(pid: int) -> set[int]:
    """`pid` and every live process below it (from /proc): what a stack consists of."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found

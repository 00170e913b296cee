"""Two small changes to Ray Serve's proxy and replicas, applied in every Ray worker of the stack:
common/serve_preload.py calls `apply` on import, and Ray imports that module first in each worker
(RAY_preload_python_modules, set by services/stack.py for `molm3d serve` and the benches, and by
k8s/base/rayservice.yaml in the cluster).

1. Local binding. Serve 2.60 listens on "[::]" (every interface) with its gRPC proxy
   (`grpc_util.start_grpc_server`) and with each replica's inter-deployment gRPC server
   (`Replica._on_initialized`), and has no option for it. With $MOLM3D_SERVE_GRPC_HOST set (stack.py
   sets it to the HTTP host when that is a loopback address; never set on Kubernetes), both bind
   that host instead.
2. Health without routing metadata. Serve's gRPC proxy picks the application from the `application`
   metadata, or takes the only one there is; with several applications and no metadata it answers
   NOT_FOUND. Kubelet gRPC probes and load balancers send no metadata, so `grpc.health.v1.Health`
   calls without it go to the application whose route prefix is "/" (the gateway), as HTTP does.

Each replaces two functions and checks first that Serve's code still has the shape it was
written against (Ray 2.60); if it does not, it logs a warning and leaves Serve as it is, and
tests/services/test_ports.py and test_health.py fail and say so.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import os
import time
from typing import Any

log = logging.getLogger("molm3d.services")

GRPC_HOST_ENV = "MOLM3D_SERVE_GRPC_HOST"
HEALTH_SERVICE = "/grpc.health.v1.Health/"
PRELOAD_MODULE = "molm3d_services.common.serve_preload"
PRELOAD_ENV = "RAY_preload_python_modules"  # Ray's `preload_python_modules` setting (case matters)
# Test hook: a worker whose environment has it sleeps this long before it takes its actor, as a slow
# checkpoint load would (tests/services/conftest.py sets it on the LM deployment's runtime_env).
START_DELAY_ENV = "MOLM3D_TEST_START_DELAY_S"
TESTED_RAY = "2.60."


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _grpc_address(host: str, port: str) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shape_is(fn: Any, needle: str) -> bool:
    try:
        return needle in inspect.getsource(fn)
    except (OSError, TypeError):
        return False


def bind_grpc_locally(host: str) -> bool:
    """Serve's gRPC proxy and replica gRPC servers bind `host` instead of "[::]"."""
    from ray.serve._private import default_impl, grpc_util, replica

    if not (
        _shape_is(grpc_util.start_grpc_server, 'add_grpc_address(server, f"[::]:')
        and _shape_is(replica.Replica._on_initialized, 'add_port_to_grpc_server(self._server, "[::]:0")')
    ):
        log.warning("Serve's gRPC servers changed shape; they keep listening on every interface")
        return False

    def rebind(address: str) -> str:
        wildcard, _, port = address.rpartition(":")
        return _grpc_address(host, port) if wildcard == "[::]" else address

    add_grpc_address = default_impl.add_grpc_address  # start_grpc_server imports it at call time
    add_port_to_grpc_server = replica.add_port_to_grpc_server  # imported at replica's module level
    default_impl.add_grpc_address = lambda server, address: add_grpc_address(server, rebind(address))
    replica.add_port_to_grpc_server = lambda server, address: add_port_to_grpc_server(server, rebind(address))
    return True


def route_health_to_root_app() -> bool:
    """gRPC health calls without `application` metadata go to the application served at "/"."""
    from ray.serve._private import proxy, proxy_request_response
    from ray.serve._private.proxy_router import ProxyRouter

    request_type = proxy_request_response.gRPCProxyRequest
    if not (
        _shape_is(proxy.GenericProxy._get_response_handler_info, "get_handle_for_endpoint(")
        and _shape_is(request_type.setup_variables, 'key == "application"')
        and _shape_is(ProxyRouter.update_routes, "self.endpoints = endpoints")
    ):
        log.warning("Serve's gRPC routing changed shape; health calls still need `application` metadata")
        return False

    setup_variables = request_type.setup_variables

    def setup_variables_with_default_app(self: Any) -> None:
        setup_variables(self)
        if not self.app_name and self.service_method.startswith(HEALTH_SERVICE):
            self.app_name = ROOT_APP  # resolved by get_handle_for_endpoint below

    get_handle_for_endpoint = ProxyRouter.get_handle_for_endpoint

    def get_handle_or_root(self: Any, target_app_name: str) -> Any:
        if target_app_name == ROOT_APP:
            for endpoint, info in self.endpoints.items():
                if info.route == "/" and endpoint in self.handles:
                    return info.route, self.handles[endpoint], info.app_is_cross_language
            return None
        return get_handle_for_endpoint(self, target_app_name)

    request_type.setup_variables = setup_variables_with_default_app
    ProxyRouter.get_handle_for_endpoint = get_handle_or_root
    return True


# Not a valid application name (Serve's names cannot hold "/"), so it never shadows a real one.
ROOT_APP = "/"


def apply() -> None:
    """Runs once in every Ray worker process of the stack, before it takes its actor."""
    import ray

    delay_s = float(os.environ.get(START_DELAY_ENV) or 0)
    if delay_s > 0:
        log.warning("%s=%s: this worker starts %.0f s late", START_DELAY_ENV, delay_s, delay_s)
        time.sleep(delay_s)

    if not ray.__version__.startswith(TESTED_RAY):
        log.warning("Ray %s, not %sx: Serve patches not applied", ray.__version__, TESTED_RAY)
        return
    host = os.environ.get(GRPC_HOST_ENV, "")
    if host:
        bind_grpc_locally(host)
    route_health_to_root_app()

"""The shape every stage shares: token check, metrics and typed errors around each RPC method.

A stage method is called two ways: by Serve's gRPC proxy (with `grpc_context`) and by the gateway
through a deployment handle (without). Either way it returns the response message or raises
ServiceError; over gRPC the error also becomes the call's status and trailing ErrorDetail.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from molm3d_core.errors import ErrorCode, MoleculeError

from .auth import DEFAULT_TOKEN_ENV, check_grpc, configured_token
from .errors import ServiceError, set_status
from .grpc_decode import Undecodable
from .metrics import StageMetrics

log = logging.getLogger("molm3d.services")


class Stage:
    stage = "stage"

    def _init_stage(self, token_env: str = DEFAULT_TOKEN_ENV) -> None:
        self.metrics = StageMetrics(self.stage)
        self.token = configured_token(token_env)

    def as_service_error(self, exc: BaseException) -> ServiceError:
        if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
            exc = exc.cause
        if isinstance(exc, ServiceError):
            return exc
        if isinstance(exc, MoleculeError):
            return ServiceError.invalid(exc, self.stage)
        if isinstance(exc, BackPressureError):
            return ServiceError.make(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "overloaded",
                f"a downstream stage is at its queue limit: {exc}",
                self.stage,
            )
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return ServiceError.make(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", "the request's deadline passed", self.stage
            )
        if isinstance(exc, RayActorError):  # a replica died or restarts: retryable; its message names hosts
            log.warning("%s: a downstream replica is unavailable: %s", self.stage, exc)
            return ServiceError.make(
                grpc.StatusCode.UNAVAILABLE, "unavailable", "a stage replica is restarting; retry", self.stage
            )
        # The exception's text can hold addresses, PIDs and paths: it goes to the log, not to the client.
        log.exception("%s: internal error", self.stage, exc_info=exc)
        return ServiceError.make(
            grpc.StatusCode.INTERNAL, "internal", f"internal error in the {self.stage} stage (see its log)", self.stage
        )

    def __getattr__(self, name: str) -> Any:
        """An RPC this stage does not serve (another stage's method, health Watch, Check on an inner
        stage): UNIMPLEMENTED, instead of Serve's INTERNAL that lists this class's methods."""
        if not name[:1].isupper():
            raise AttributeError(name)
        stage = type(self).stage

        def unimplemented(grpc_context: Any) -> ServiceError:
            err = ServiceError.make(grpc.StatusCode.UNIMPLEMENTED, "unimplemented", f"the {stage} stage does not "
                                    f"serve {name}", stage)  # fmt: skip
            return self._fail(err, grpc_context)

        if name == "Watch" or name.endswith("Stream"):  # the server-streaming RPCs of our protos and health

            async def stream(request: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
                raise unimplemented(grpc_context)
                yield  # an async generator, as Serve calls streaming methods

            return stream

        async def unary(request: Any, grpc_context: Any = None) -> Any:
            raise unimplemented(grpc_context)

        return unary

    async def __call__(self, request: Any) -> Any:
        """HTTP to an inner stage: only the gateway speaks HTTP."""
        from starlette.responses import JSONResponse

        return JSONResponse(
            {
                "error": {
                    "status": "NOT_FOUND",
                    "code": "not_found",
                    "message": f"the {self.stage} stage answers gRPC only; use the gateway's HTTP API",
                }
            },
            status_code=404,
        )

    def _fail(self, exc: BaseException, grpc_context: Any) -> ServiceError:
        err = self.as_service_error(exc)
        self.metrics.error(err.code_name, err.detail.code)
        set_status(grpc_context, err)
        return err


def invalid_request(message: str, record_id: str = "") -> MoleculeError:
    return MoleculeError(ErrorCode.INVALID_REQUEST, message, record_id or None)


def _admit(stage: Stage, request: Any, grpc_context: Any) -> None:
    """The checks before any work: the token, then that the proxy could decode the request's bytes."""
    check_grpc(grpc_context, stage.token, stage.stage)
    if isinstance(request, Undecodable):
        raise invalid_request(request.describe())


def rpc(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a unary RPC method of a Stage (see the module docstring)."""

    @functools.wraps(fn)
    async def wrapper(self: Stage, request: Any, grpc_context: Any = None) -> Any:
        with self.metrics.request(fn.__name__):
            try:
                _admit(self, request, grpc_context)
                return await fn(self, request, grpc_context)
            except Exception as exc:
                raise self._fail(exc, grpc_context) from None

    return wrapper


def rpc_stream(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """Wrap a server-streaming RPC method of a Stage."""

    @functools.wraps(fn)
    async def wrapper(self: Stage, request: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        with self.metrics.request(fn.__name__):
            try:
                _admit(self, request, grpc_context)
                async for item in fn(self, request, grpc_context):
                    yield item
            except Exception as exc:
                raise self._fail(exc, grpc_context) from None

    return wrapper

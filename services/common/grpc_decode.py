"""Undecodable request bytes become INVALID_ARGUMENT, not the proxy's UNKNOWN "Unexpected DecodeError".

Serve's gRPC proxy decodes each request with the deserializer of the method handler that the
servicer functions in serve.yaml (`grpc_options.grpc_servicer_functions`) registered, before it
knows the application or has a servicer context; a DecodeError there reaches the client as UNKNOWN
with the exception text. The functions below register the generated handlers with a deserializer
that returns an `Undecodable` marker instead of raising. The proxy forwards it like any request; the
stage's `rpc` / `rpc_stream` wrapper (services/common/stage.py) checks the token and then answers
INVALID_ARGUMENT `invalid_request` "the request is not a valid molm3d.v1.AskRequest (...)".

serve.yaml names these functions in place of the generated `add_*Servicer_to_server`, e.g.
`molm3d_services.common.grpc_decode.add_Molm3DServiceServicer_to_server`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2_grpc
from molm3d.v1 import conformer_pb2_grpc, encoder_pb2_grpc, gateway_pb2_grpc, lm_pb2_grpc, retrieval_pb2_grpc


@dataclass(frozen=True)
class Undecodable:
    """What a request's bytes decoded to when they are not a valid `message_type`. Picklable: the
    proxy sends it to a replica as it would the request message."""

    message_type: str
    reason: str

    def describe(self) -> str:
        return f"the request is not a valid {self.message_type} ({self.reason})"


def decoding(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer` (a generated Message.FromString) returning `Undecodable` where it would raise."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    message_type = descriptor.full_name if descriptor is not None else "request message"

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as err:
            # upb's text is "Error parsing message with type 'X': <reason>"; keep the reason only
            reason = str(err).rpartition("': ")[2] or "wire format was corrupt"
            return Undecodable(message_type, reason[:1].lower() + reason[1:])

    return decode


def _wrapped(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    return handler._replace(request_deserializer=decoding(handler.request_deserializer))


class _DecodingServer:
    """A server as the generated add_*_to_server functions see it: the handlers they add get the
    decoding deserializer, then go to the real server (Serve's, which routes them to replicas)."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        for handler in generic_rpc_handlers:
            # grpc.method_handlers_generic_handler keeps "/pkg.Service/Method" -> handler here; Serve's
            # gRPCGenericServer reads and rewrites the same attribute.
            handler._method_handlers = {name: _wrapped(h) for name, h in handler._method_handlers.items()}
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        add = getattr(self._server, "add_registered_method_handlers", None)
        if add is not None:
            add(service_name, {name: _wrapped(h) for name, h in method_handlers.items()})


def _decoding(add: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def add_to_server(servicer: Any, server: Any) -> None:
        add(servicer, _DecodingServer(server))

    add_to_server.__name__ = add_to_server.__qualname__ = add.__name__
    add_to_server.__doc__ = f"{add.__module__}.{add.__name__}, with undecodable requests typed."
    return add_to_server


add_Molm3DServiceServicer_to_server = _decoding(gateway_pb2_grpc.add_Molm3DServiceServicer_to_server)
add_ConformerServiceServicer_to_server = _decoding(conformer_pb2_grpc.add_ConformerServiceServicer_to_server)
add_EncoderServiceServicer_to_server = _decoding(encoder_pb2_grpc.add_EncoderServiceServicer_to_server)
add_LMServiceServicer_to_server = _decoding(lm_pb2_grpc.add_LMServiceServicer_to_server)
add_RetrievalServiceServicer_to_server = _decoding(retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server)
add_HealthServicer_to_server = _decoding(health_pb2_grpc.add_HealthServicer_to_server)

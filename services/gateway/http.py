"""HTTP JSON face of the gateway: the same methods as gRPC, JSON in the protobuf JSON mapping.

GET  /v1/health/live                 200 while the gateway runs
GET  /v1/health/ready                200 once every stage answers, else 503
POST /v1/caption | /v1/ask | /v1/embed | /v1/retrieve   Caption/Ask/Embed/RetrieveRequest -> JSON
POST /v1/caption:stream | /v1/ask:stream         NDJSON lines of AnswerChunk
POST /v1/chat/completions, GET /v1/models, POST /v1/embeddings   OpenAI-compatible (openai_api.py)
GET  /ui, /ui/<file>                 the web console's files (ui.py)
POST /v1/molecule, /v1/depict        the console's conformer, depiction and property values (console_api.py)
POST /v1/bulk/jobs, GET /v1/bulk/jobs/{id}[/results]   bulk jobs over HTTP (bulk_api.py)
Headers: `authorization: Bearer <token>` when a token is configured; `x-molm3d-timeout-ms`.

The body is read as JSON whatever its Content-Type. Every failure is a JSON body
{"error": {"status", "code", "message", ...}}: 401 before anything else without the token, 400 for a
body that is not a JSON object of the request message, 404 / 405 for an unknown route or method.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from molm3d.v1 import gateway_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..common.auth import check_grpc
from ..common.errors import ServiceError

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_ROUTES = {
    "/v1/caption": ("Caption", gateway_pb2.CaptionRequest),
    "/v1/ask": ("Ask", gateway_pb2.AskRequest),
    "/v1/embed": ("Embed", gateway_pb2.EmbedRequest),
    "/v1/retrieve": ("Retrieve", gateway_pb2.RetrieveRequest),
    "/v1/caption:stream": ("CaptionStream", gateway_pb2.CaptionRequest),
    "/v1/ask:stream": ("AskStream", gateway_pb2.AskRequest),
}


OPENAI_ROUTES = ("/v1/chat/completions", "/v1/models", "/v1/embeddings")  # openai_api.py
CONSOLE_ROUTES = ("/v1/molecule", "/v1/depict")  # console_api.py
BULK_PREFIX = "/v1/bulk/jobs"  # bulk_api.py


class HttpCallContext:
    """The part of a gRPC context the stage wrappers use, filled from HTTP headers."""

    def __init__(self, headers: Any) -> None:
        self.metadata = [
            ("authorization", headers.get("authorization", "")),
            ("molm3d-timeout-ms", headers.get("x-molm3d-timeout-ms", "")),
        ]

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.metadata if v]

    def set_code(self, code: grpc.StatusCode) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


def error_response(err: ServiceError) -> JSONResponse:
    detail = json_format.MessageToDict(err.detail, preserving_proto_field_name=True)
    retry_ms = err.detail.retry_after_ms
    headers = {"Retry-After": str(max(1, -(-retry_ms // 1000)))} if retry_ms else None
    return JSONResponse(
        {"error": {"status": err.code_name, **detail}}, status_code=HTTP_STATUS.get(err.status, 500), headers=headers
    )


def no_route(request: Request, path: str) -> JSONResponse:
    """404 for a path no route serves."""
    return JSONResponse(
        {"error": {"status": "NOT_FOUND", "code": "not_found", "message": f"no route {request.method} {path}"}},
        status_code=404,
    )


def wrong_method(allowed: str) -> JSONResponse:
    """405 for a route asked with another method than `allowed`."""
    return JSONResponse(
        {"error": {"status": "METHOD_NOT_ALLOWED", "code": "method_not_allowed", "message": f"use {allowed}"}},
        status_code=405,
        headers={"allow": allowed},
    )


def bad_body(err: ValueError, stage: str) -> ServiceError:
    """INVALID_ARGUMENT for a body `parse_body` refused."""
    return ServiceError.make(grpc.StatusCode.INVALID_ARGUMENT, "invalid_request", f"bad JSON body: {err}", stage)


def _json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _check_objects(value: dict[str, Any], descriptor: Descriptor, path: str) -> None:
    """ValueError where a message-typed field holds something other than a JSON object (or null):
    protobuf's ParseDict would read a string or an array as a list of field names."""
    for name, item in value.items():
        field = descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)  # json_name
        if field is None or field.message_type is None or item is None:
            continue  # unknown names and scalars: ParseDict's own messages say what is wrong
        if field.is_repeated:  # lists and maps: ParseDict checks their items
            continue
        where = f"{path}.{name}" if path else name
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a JSON object, got {_kind(item)}")
        _check_objects(item, field.message_type, where)


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return kinds.get(type(value), "null")


def parse_body(raw: bytes, message_type: Any) -> Any:
    """A request message from a JSON object body (empty: all defaults); ValueError says what is wrong."""
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(str(err)) from None
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {_kind(body)}")
    try:
        _check_objects(body, message_type.DESCRIPTOR, "")
        return json_format.ParseDict(body, message_type())
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (json_format.ParseError, TypeError, ValueError) as err:
        raise ValueError(str(err)) from None


async def handle_http(gateway: Any, request: Request) -> Response:
    path = request.url.path.rstrip("/")
    if request.method == "GET" and path == "/v1/health/live":
        return JSONResponse({"status": "live"})
    if request.method == "GET" and path == "/v1/health/ready":
        stages = await gateway.stages_ready()
        ok = all(stages.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "stages": stages}, status_code=200 if ok else 503
        )
    if path in OPENAI_ROUTES or path.startswith("/v1/models/"):
        return await gateway.openai.handle(request, path)
    if path == "/ui" or path.startswith("/ui/"):
        from .ui import handle_ui

        return await handle_ui(gateway, request, path)
    if path in CONSOLE_ROUTES or any(path.startswith(route + "/") for route in CONSOLE_ROUTES):
        from .console_api import handle_console  # (imports this module)

        return await handle_console(gateway, request, path)
    if path == BULK_PREFIX or path.startswith(BULK_PREFIX + "/"):
        from .bulk_api import handle_bulk

        return await handle_bulk(gateway, request, path)
    if path not in _ROUTES:
        return no_route(request, path)
    if request.method != "POST":
        return wrong_method("POST")
    method, message_type = _ROUTES[path]
    context = HttpCallContext(request.headers)
    try:  # the token before the body, as over gRPC: without it, nothing about the request is judged
        check_grpc(context, gateway.token, gateway.stage)
        message = parse_body(await request.body(), message_type)
    except ServiceError as err:
        return error_response(err)
    except ValueError as err:
        return error_response(bad_body(err, "gateway"))
    call = getattr(gateway, method)
    if not method.endswith("Stream"):
        try:
            return JSONResponse(_json(await call(message, context)))
        except ServiceError as err:
            return error_response(err)

    stream = call(message, context)
    try:  # fail with a status code before the 200 header when the first chunk is already an error
        first = await stream.__anext__()
    except ServiceError as err:
        return error_response(err)

    async def lines():
        yield json.dumps(_json(first)) + "\n"
        try:
            async for chunk in stream:
                yield json.dumps(_json(chunk)) + "\n"
        except ServiceError as err:
            yield json.dumps({"error": {"status": err.code_name, **_json(err.detail)}}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")

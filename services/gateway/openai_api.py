"""OpenAI-compatible routes on the gateway's HTTP port, with molecules in the messages.

POST /v1/chat/completions   a chat completion; `"stream": true` sends server-sent events (OpenAI's chunks)
GET  /v1/models             the served checkpoint (GET /v1/models/{id}: the same one, by id)
POST /v1/embeddings         retrieval vectors for texts and molecules

A chat becomes one gateway Prompt (openai_requests.py) and goes through the gateway's own path, the
one Caption and Ask take (admission control, deadline, conformer -> encoder -> LM), so a one-molecule
chat answers exactly what Ask answers for the same question and decoding. Replies are OpenAI's objects
plus a `molm3d` field (provenance, parsed values); errors are OpenAI error objects whose `code` is the
molm3d error code. The forms, parameters and fields: services/README.md, "OpenAI-compatible API".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from molm3d.v1 import common_pb2, encoder_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from molm3d_core.prompts import parse_number

from ..common.auth import check_grpc
from ..common.errors import ServiceError
from ..common.tensors import from_proto
from .http import HTTP_STATUS, HttpCallContext
from .openai_requests import ApiError, ChatRequest, parse_chat, parse_embeddings

if TYPE_CHECKING:
    from .deployment import GatewayStage

log = logging.getLogger("ray.serve")

MODEL_CACHE_S = 30.0  # how long the served checkpoint's description is reused (a reconfigure may change it)
_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    504: "timeout_error",
}
_GRPC_NAME = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND"}


def _error(status: int, message: str, code: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _service_error_body(err: ServiceError, param: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    d, status = err.detail, HTTP_STATUS.get(err.status, 500)
    headers = {}
    if d.retry_after_ms:
        headers = {"retry-after": str(max(1, -(-d.retry_after_ms // 1000))), "retry-after-ms": str(d.retry_after_ms)}
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, {"error": {"message": d.message, "type": kind, "param": param, "code": d.code}}, headers


def _molecule_param(err: ServiceError, params: list[str]) -> str | None:
    index = getattr(err, "molecule_index", None)
    return params[index] if index is not None and index < len(params) else None


# -- responses ----------------------------------------------------------------------------------------------


def _provenance(encoded: list[tuple[Any, Any]], model_id: str, request_id: str) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "request_id": request_id,
        "molecules": [
            {
                "record_id": c.record_id,
                "smiles": c.smiles,
                "inchikey": c.inchikey,
                "conformer_method": c.method,
                "warnings": list(c.warnings),
            }
            for c, _ in encoded
        ],
    }


def _parsed(text: str, task: str) -> dict[str, Any]:
    number = parse_number(text) if task == "ask" else None
    return {"value": number.value if number else None, "unit": number.unit if number else None}


def _created(checkpoint: dict[str, Any]) -> int:
    try:
        return int(datetime.fromisoformat(checkpoint["created"].replace("Z", "+00:00")).timestamp())
    except (KeyError, AttributeError, TypeError, ValueError):
        return 0


class OpenAIRoutes:
    """The routes above, over one gateway replica."""

    def __init__(self, gateway: GatewayStage) -> None:
        self.gateway = gateway
        self._checkpoint: dict[str, Any] | None = None
        self._checkpoint_at = 0.0

    async def checkpoint(self, timeout_s: float) -> dict[str, Any]:
        """The LM stage's description of its checkpoint (cached for MODEL_CACHE_S), within the call's deadline."""
        if self._checkpoint is None or time.monotonic() - self._checkpoint_at > MODEL_CACHE_S:
            self._checkpoint = await asyncio.wait_for(self.gateway.handles["lm"].checkpoint.remote(), timeout_s)
            self._checkpoint_at = time.monotonic()
        return self._checkpoint

    def _model_object(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": checkpoint["model_id"],
            "object": "model",
            "created": _created(checkpoint),
            "owned_by": "molm3d",
            "molm3d": checkpoint,
        }

    async def _check_model(self, model: str, timeout_s: float) -> dict[str, Any]:
        checkpoint = await self.checkpoint(timeout_s)
        if model != checkpoint["model_id"]:
            raise ApiError(
                f"the model `{model}` does not exist; this server serves `{checkpoint['model_id']}`",
                "model",
                "model_not_found",
                404,
            )
        return checkpoint

    async def handle(self, request: Request, path: str) -> Response:
        gateway, method = self.gateway, request.method
        routes = {
            "/v1/chat/completions": ("POST", "ChatCompletions"),
            "/v1/embeddings": ("POST", "Embeddings"),
            "/v1/models": ("GET", "Models"),
        }
        name = "Models" if path.startswith("/v1/models/") else None
        want, name = routes.get(path, ("GET", name))
        if method != want:
            return _error(405, f"use {want} for {path}", "method_not_allowed")
        with gateway.metrics.request(name):
            try:  # the token before the body, as every other route
                context = HttpCallContext(request.headers)
                check_grpc(context, gateway.token, gateway.stage)
                if name == "Models":
                    return await self.models(path, gateway._timeout(context))
                raw = await request.body()
                try:
                    body = json.loads(raw or b"null")
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
                    raise ApiError(f"the body is not JSON: {str(err)[:200]}") from None
                if not isinstance(body, dict):
                    raise ApiError("the body must be a JSON object")
                timeout_s = gateway._timeout(context)
                if name == "Embeddings":
                    return await self.embeddings(body, timeout_s)
                return await self.chat(body, timeout_s)
            except ApiError as err:
                gateway.metrics.error(_GRPC_NAME.get(err.status, "UNKNOWN"), err.code)
                return _error(err.status, err.message, err.code, err.param)
            except Exception as exc:
                err = gateway._fail(exc, None)
                status, body, headers = _service_error_body(err, getattr(exc, "openai_param", None))
                return JSONResponse(body, status_code=status, headers=headers)

    async def models(self, path: str, timeout_s: float) -> Response:
        checkpoint = await self.checkpoint(timeout_s)
        model = self._model_object(checkpoint)
        if path == "/v1/models":
            return JSONResponse({"object": "list", "data": [model]})
        wanted = path.removeprefix("/v1/models/")
        if wanted != model["id"]:
            raise ApiError(f"the model `{wanted}` does not exist", "model", "model_not_found", 404)
        return JSONResponse(model)

    # -- chat ---------------------------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any], timeout_s: float) -> Response:
        from .deployment import _request_id, task_decoding

        chat = parse_chat(body)
        await self._check_model(chat.model, timeout_s)
        if body.get("user"):
            log.info("chat completion for user %r", body["user"])
        try:
            decoding = task_decoding(chat.decoding, chat.task)
        except Exception as exc:
            raise self._with_param(exc, None) from None
        request_id, created = _request_id(), int(time.time())
        base = {"id": f"chatcmpl-{request_id}", "created": created, "model": chat.model}
        if chat.stream:
            return await self._chat_stream(chat, decoding, timeout_s, base, request_id)
        try:
            encoded, results = await self.gateway.complete(chat.prompt, decoding, timeout_s, chat.n)
        except Exception as exc:
            raise self._with_param(exc, chat.molecule_params) from None
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text, "refusal": None},
                "finish_reason": _FINISH.get(r.finish_reason, "stop"),
                "logprobs": None,
                "molm3d": _parsed(r.text, chat.task),
            }
            for i, r in enumerate(results)
        ]
        prompt_tokens, completion_tokens = results[0].prompt_tokens, sum(r.num_tokens for r in results)
        model_id = encoded[0][1].model_id if encoded else chat.model
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": None,
                "molm3d": _provenance(encoded, model_id, request_id),
            }
        )

    def _with_param(self, exc: Exception, molecule_params: list[str] | None) -> Exception:
        """`exc` as a ServiceError that knows its OpenAI `param` (a molecule's part, or the decoding)."""
        err = self.gateway.as_service_error(exc)
        if getattr(err, "molecule_index", None) is not None and molecule_params:
            err.openai_param = _molecule_param(err, molecule_params)
        elif err.detail.message.startswith("decoding."):
            field = err.detail.message.removeprefix("decoding.").split(" ", 1)[0]
            err.openai_param = {"max_new_tokens": "max_tokens"}.get(field, field)
        return err

    async def _chat_stream(
        self, chat: ChatRequest, decoding: Any, timeout_s: float, base: dict[str, Any], request_id: str
    ) -> Response:
        events = self.gateway.stream(chat.prompt, decoding, timeout_s, chat.n)
        try:  # refusals and bad molecules are answered with their status, before the 200 header
            encoded = await anext(events)
        except Exception as exc:
            await events.aclose()
            raise self._with_param(exc, chat.molecule_params) from None
        model_id = encoded[0][1].model_id if encoded else chat.model
        usage_field = {"usage": None} if chat.include_usage else {}

        def event(choices: list[dict[str, Any]], **extra: Any) -> str:
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "system_fingerprint": None,
                "choices": choices,
                **usage_field,
                **extra,
            }
            return f"data: {json.dumps(chunk)}\n\n"

        async def sse():
            async with contextlib.aclosing(events):
                first = [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
                    for i in range(chat.n)
                ]
                yield event(first, molm3d=_provenance(encoded, model_id, request_id))
                texts, prompt_tokens, completion_tokens = [""] * chat.n, 0, 0
                try:
                    async for i, chunk in events:
                        texts[i] += chunk.text
                        if chunk.text:
                            yield event(
                                [
                                    {
                                        "index": i,
                                        "delta": {"content": chunk.text},
                                        "finish_reason": None,
                                        "logprobs": None,
                                    }
                                ]
                            )
                        if chunk.finish_reason:
                            prompt_tokens, completion_tokens = chunk.prompt_tokens, completion_tokens + chunk.num_tokens
                            yield event(
                                [
                                    {
                                        "index": i,
                                        "delta": {},
                                        "logprobs": None,
                                        "finish_reason": _FINISH.get(chunk.finish_reason, "stop"),
                                        "molm3d": _parsed(texts[i], chat.task),
                                    }
                                ]
                            )
                except Exception as exc:
                    err = self.gateway._fail(exc, None)
                    _, body, _ = _service_error_body(err)
                    yield f"data: {json.dumps(body)}\n\n"
                    return
                if chat.include_usage:
                    usage = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    }
                    yield event([], usage=usage)
                yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    # -- embeddings ---------------------------------------------------------------------------------------

    async def embeddings(self, body: dict[str, Any], timeout_s: float) -> Response:
        from .deployment import _request_id

        model, fmt, queries = parse_embeddings(body)
        await self._check_model(model, timeout_s)

        async def one(query: common_pb2.MoleculeInput | str) -> tuple[np.ndarray, int, dict[str, Any]]:
            if isinstance(query, str):
                found = await self.gateway._call("encoder", "EncodeText", encoder_pb2.EncodeTextRequest(text=query))
                vector = from_proto(found.retrieval_embedding).numpy()
                return vector, found.num_tokens, {"kind": "text", "shape": list(vector.shape)}
            ((conformer, encoding),) = await self.gateway._encode_all([query])
            vector = from_proto(encoding.retrieval_embedding).numpy()  # (Q, D): one unit vector per query token
            provenance = _provenance([(conformer, encoding)], "", "")["molecules"][0]
            return vector, vector.shape[0], {"kind": "molecule", "shape": list(vector.shape), **provenance}

        results = await asyncio.wait_for(asyncio.gather(*(one(q) for q in queries), return_exceptions=True), timeout_s)
        for i, result in enumerate(results):
            if isinstance(result, Exception):
                err = self.gateway.as_service_error(result)
                err.openai_param = f"input[{i}]"
                raise err
        data = []
        for i, (vector, _, extra) in enumerate(results):
            flat = np.ascontiguousarray(vector.reshape(-1), dtype="<f4")
            embedding = base64.b64encode(flat.tobytes()).decode() if fmt == "base64" else flat.tolist()
            data.append({"object": "embedding", "index": i, "embedding": embedding, "molm3d": extra})
        tokens = sum(r[1] for r in results)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "request_id": _request_id(),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

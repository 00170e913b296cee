"""Requests of the OpenAI-compatible routes (openai_api.py): a chat completion's messages -> one Prompt
(molecules from content parts and inline tags) plus its decoding, and embedding inputs; every refusal an
ApiError naming the OpenAI `param`. The forms and parameters are documented in services/README.md."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from molm3d.v1 import common_pb2

from molm3d_core.prompts import CAPTION_INSTRUCTION

if TYPE_CHECKING:
    from .deployment import Prompt

MAX_N = 8
MAX_MESSAGES = 128
MAX_EMBEDDING_INPUTS = 64
# Accepted at their neutral value only (clients send them by default); anything else is refused.
_NEUTRAL: dict[str, Any] = {
    "frequency_penalty": lambda v: v == 0,
    "presence_penalty": lambda v: v == 0,
    "logprobs": lambda v: v is False,
    "top_logprobs": lambda v: v == 0,
    "tools": lambda v: v == [],
    "tool_choice": lambda v: v == "none",
    "parallel_tool_calls": lambda v: isinstance(v, bool),
    "response_format": lambda v: v == {"type": "text"},
    "modalities": lambda v: v == ["text"],
    "store": lambda v: v is False,
    "metadata": lambda v: isinstance(v, dict),
    "service_tier": lambda v: v in ("auto", "default"),
}
_CHAT_KEYS = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "user",
    "repetition_penalty",
    "no_repeat_ngram_size",
    *_NEUTRAL,
}
_INLINE = re.compile(r"<molecule(?P<attrs>(?:\s+\w+\s*=\s*\"[^\"]*\")*)\s*>(?P<text>.*?)</molecule>", re.S)
_ATTR = re.compile(r"(\w+)\s*=\s*\"([^\"]*)\"")


class ApiError(Exception):
    """A request refused before any stage saw it: HTTP status, molm3d error code, OpenAI `param`."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def _number(body: dict[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise ApiError(f"{name} must be a number, got {json.dumps(value)[:40]}", name)
    if not (low < value if low_open else low <= value) or value > high:
        raise ApiError(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{name} must be an integer, got {json.dumps(value)[:40]}", name)
    if not low <= value <= high:
        raise ApiError(f"{name} must be in {low}..{high}, got {value}", name)
    return value


def _check_keys(body: dict[str, Any], known: set[str]) -> None:
    for key, value in body.items():
        if value is None:
            continue  # OpenAI's clients send null for "not given"
        if key in _NEUTRAL and key in known:
            if not _NEUTRAL[key](value):
                raise ApiError(
                    f"{key}={json.dumps(value)[:60]} is not supported by molm3d", key, "unsupported_parameter"
                )
        elif key not in known:
            raise ApiError(f"unsupported parameter: {key}", key, "unsupported_parameter")


def _molecule_input(value: Any, where: str) -> common_pb2.MoleculeInput:
    """A content part's `molecule` object: {"smiles": ...} or {"format": ..., "text": ...}, optional "id"."""
    if not isinstance(value, dict):
        raise ApiError('a molecule part needs a `molecule` object, e.g. {"smiles": "CCO"}', where)
    unknown = set(value) - {"smiles", "format", "text", "id"}
    if unknown:
        raise ApiError(f"unknown molecule field(s): {', '.join(sorted(unknown))}", where)
    smiles, text, fmt, mol_id = (value.get(k) for k in ("smiles", "text", "format", "id"))
    if (smiles is None) == (text is None):
        raise ApiError("a molecule has either `smiles` or `format` and `text`", where)
    for name, item in (("smiles", smiles), ("text", text), ("format", fmt), ("id", mol_id)):
        if item is not None and not isinstance(item, str):
            raise ApiError(f"molecule.{name} must be a string", where)
    if smiles is not None:
        return common_pb2.MoleculeInput(id=mol_id or "", format="smiles", text=smiles)
    return common_pb2.MoleculeInput(id=mol_id or "", format=(fmt or "smiles").lower(), text=text)


def _inline_molecules(text: str, where: str) -> tuple[str, list[common_pb2.MoleculeInput]]:
    """`text` without its `<molecule ...>...</molecule>` tags, and the molecules they hold."""
    molecules = []

    def take(match: re.Match) -> str:
        attrs = dict(_ATTR.findall(match.group("attrs")))
        unknown = set(attrs) - {"format", "id"}
        if unknown:
            raise ApiError(f"unknown <molecule> attribute(s): {', '.join(sorted(unknown))}", where)
        body = match.group("text")
        fmt = attrs.get("format", "smiles").lower()
        text = body.strip() if fmt == "smiles" else body.strip("\n")  # a record's leading spaces may matter
        molecules.append(common_pb2.MoleculeInput(id=attrs.get("id", ""), format=fmt, text=text))
        return " "

    rest = _INLINE.sub(take, text)
    if "<molecule" in rest:
        raise ApiError(
            "an inline molecule must be written <molecule>SMILES</molecule> or "
            '<molecule format="sdf|mol|xyz|pdb">record</molecule>',
            where,
        )
    return " ".join(rest.split()), molecules


def _content(message: dict[str, Any], i: int, allow_molecules: bool) -> tuple[str, list, list[str]]:
    """A message's text, its molecules and each molecule's `param` path."""
    content, where = message.get("content"), f"messages[{i}].content"
    if content is None:
        return "", [], []
    if isinstance(content, str):
        parts: list[Any] = [{"type": "text", "text": content}]
        paths = [where]
    elif isinstance(content, list):
        parts, paths = content, [f"{where}[{j}]" for j in range(len(content))]
    else:
        raise ApiError("content must be a string or an array of content parts", where)
    texts, molecules, params = [], [], []
    for part, path in zip(parts, paths, strict=True):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError("a text part needs a `text` string", path)
            text, inline = _inline_molecules(part["text"], path)
            texts.append(text)
            molecules += inline
            params += [path] * len(inline)
        elif kind == "molecule":
            molecules.append(_molecule_input(part.get("molecule"), path))
            params.append(path)
        else:
            raise ApiError(
                f"content part type {json.dumps(kind)[:40]} is not supported; use text or molecule",
                path,
                "unsupported_content",
            )
    if molecules and not allow_molecules:
        raise ApiError(f"molecules belong in user messages, not in a {message.get('role')} message", params[0])
    return " ".join(t for t in texts if t).strip(), molecules, params


@dataclass
class ChatRequest:
    prompt: Prompt
    task: str  # ask | caption (which defaults the decoding takes)
    molecule_params: list[str]
    decoding: common_pb2.DecodingOptions
    n: int
    stream: bool
    include_usage: bool
    model: str


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    from .deployment import Prompt

    _check_keys(body, _CHAT_KEYS)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty array", "messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(f"{len(messages)} messages; the limit is {MAX_MESSAGES}", "messages")
    system, dialog, molecules, params = [], [], [], []  # dialog: [role, text], same roles merged
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError("a message must be an object with a role and content", f"messages[{i}]")
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise ApiError(
                "tool and function calls are not supported by molm3d", f"messages[{i}]", "unsupported_parameter"
            )
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(f"unknown role {json.dumps(role)[:40]}", f"messages[{i}].role")
        text, found, where = _content(message, i, allow_molecules=role == "user")
        molecules += found
        params += where
        if role in ("system", "developer") or (role == "assistant" and not dialog):  # a greeting: context
            if text:
                system.append(text)
        elif dialog and dialog[-1][0] == role:
            dialog[-1][1] = f"{dialog[-1][1]}\n{text}".strip()
        else:
            dialog.append([role, text])
    if not dialog or dialog[-1][0] != "user":
        raise ApiError("the last message must be a user message", "messages")
    question = dialog[-1][1]
    history = tuple((q, a) for (_, q), (_, a) in zip(dialog[:-1:2], dialog[1:-1:2], strict=True))
    if not question and not molecules:
        raise ApiError("the last user message has neither text nor a molecule", f"messages[{len(messages) - 1}]")
    task = "ask" if question else "caption"  # a molecule alone: describe it, as Caption does

    n = _integer(body, "n", 1, MAX_N) or 1
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ApiError("stream_options supports include_usage only", "stream_options")
    if options and not stream:
        raise ApiError("stream_options needs stream: true", "stream_options")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise ApiError("user must be a string of at most 256 characters", "user")
    return ChatRequest(
        prompt=Prompt(question or CAPTION_INSTRUCTION, molecules, history, "\n".join(system)),
        task=task,
        molecule_params=params,
        decoding=_decoding(body),
        n=n,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        model=model,
    )


def _decoding(body: dict[str, Any]) -> common_pb2.DecodingOptions:
    """The request's decoding; what it leaves out takes the task's defaults (gateway.task_decoding)."""
    d = common_pb2.DecodingOptions()
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise ApiError("give max_completion_tokens or max_tokens, not both", "max_tokens")
    for name in ("max_completion_tokens", "max_tokens"):
        if (limit := _integer(body, name, 1, 1 << 30)) is not None:
            d.max_new_tokens = limit
    if (t := _number(body, "temperature", 0, 2)) is not None:
        d.temperature = t
    if (p := _number(body, "top_p", 0, 1, low_open=True)) is not None:
        d.top_p = p
    if (seed := _integer(body, "seed", -(1 << 63), (1 << 63) - 1 - MAX_N)) is not None:
        d.seed = seed
    if (penalty := _number(body, "repetition_penalty", 0, 100, low_open=True)) is not None:
        d.repetition_penalty = penalty
    if (ngram := _integer(body, "no_repeat_ngram_size", 0, 1 << 30)) is not None:
        d.no_repeat_ngram_size = ngram
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops):
            raise ApiError("stop must be a string or an array of strings", "stop")
        d.stop.extend(stops)
    return d


def parse_embeddings(body: dict[str, Any]) -> tuple[str, str, list[common_pb2.MoleculeInput | str]]:
    """(model, encoding_format, the inputs: texts and molecules) of an embeddings request."""
    _check_keys(body, {"model", "input", "encoding_format", "user"})
    model = _model(body)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError("encoding_format must be float or base64", "encoding_format")
    items = body.get("input")
    items = [items] if isinstance(items, str | dict) else items
    if not isinstance(items, list) or not items:
        raise ApiError("input must be a string, a molecule part, or a non-empty array of them", "input")
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise ApiError(f"{len(items)} inputs; the limit is {MAX_EMBEDDING_INPUTS}", "input")
    return model, fmt, [_embedding_query(item, f"input[{i}]") for i, item in enumerate(items)]


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError("model is required: GET /v1/models lists the served one", "model")
    return model


def _embedding_query(item: Any, where: str) -> common_pb2.MoleculeInput | str:
    """A text, or a molecule (a molecule part, or a string that is one inline molecule)."""
    if isinstance(item, dict):
        if item.get("type") != "molecule":
            raise ApiError("an input object must be a molecule part", where, "unsupported_content")
        return _molecule_input(item.get("molecule"), where)
    if not isinstance(item, str):
        raise ApiError("token-id inputs are not supported: send text or molecules", where, "unsupported_content")
    text, molecules = _inline_molecules(item, where)
    if molecules:
        if len(molecules) > 1 or text:
            raise ApiError("an input is either a text or one inline molecule", where)
        return molecules[0]
    if not text:
        raise ApiError("an input text is empty", where)
    return item

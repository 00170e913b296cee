"""Malformed requests over gRPC and HTTP against the real stack: every one gets a typed answer.

Issue #15 item 11: hundreds of bad requests, built from parametrised families (bad molecules in every
format, bad decoding values, questions, k, tokens, JSON bodies, protobuf bytes, routes, methods,
applications, inner-stage calls), sent concurrently in a few batches. Each must come back with its
status (gRPC INVALID_ARGUMENT / UNAUTHENTICATED / UNIMPLEMENTED / NOT_FOUND, HTTP 4xx), our error
code, and a message with nothing internal in it; afterwards the stack still answers a good Ask and
Caption. Cases that reach the LM stage go two at a time: the test stack's LM takes five.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from molm3d.v1 import common_pb2, conformer_pb2, encoder_pb2, gateway_pb2, lm_pb2, retrieval_pb2

from molm3d_services.common.errors import error_detail
from tests.helpers import ETHANOL_MOLBLOCK

from .conftest import TOKEN

AUTH = ("authorization", f"Bearer {TOKEN}")
CALL_TIMEOUT_S = 60  # a hang shows up as DEADLINE_EXCEEDED, which no case expects
# Tracebacks, source files, library paths, addresses, actor ids: nothing of it may reach a client.
INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|\.so\b|/work/|/root/|/home/|/tmp/|/project/|site-packages|Stacktrace|"
    r"pid=|ip=|actor|\b\d{1,3}(\.\d{1,3}){3}\b|0x[0-9a-fA-F]{6,}|Available methods"
)

INVALID, UNAUTH = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED
UNIMPLEMENTED, NOT_FOUND = grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND


@dataclass(frozen=True)
class Outcome:
    status: str  # gRPC status name, or the HTTP status as text
    code: str  # our ErrorDetail code ("" for a success)
    message: str


@dataclass(frozen=True)
class Case:
    id: str
    send: Callable[[object], Outcome]  # (the stack) -> what came back
    status: grpc.StatusCode | int
    code: str
    contains: str = ""  # a piece the message must hold
    lm: bool = False  # reaches the LM stage: sent two at a time


# -- senders ---------------------------------------------------------------------------------------

_channels: dict[str, grpc.Channel] = {}


def _channel(target: str) -> grpc.Channel:
    if target not in _channels:
        _channels[target] = grpc.insecure_channel(target)
    return _channels[target]


def grpc_call(path: str, request: Message | bytes, app: str = "gateway", metadata: list | None = None,
              stream: bool = False) -> Callable[[object], Outcome]:  # fmt: skip
    """A call of `path` with the request's bytes (or raw bytes), as any client in any language makes it."""
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    md = [("application", app), AUTH] if metadata is None else metadata

    def send(stack) -> Outcome:
        channel = _channel(stack.target)
        identity = lambda b: b  # noqa: E731
        try:
            if stream:
                call = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)
                for _ in call(raw, metadata=md, timeout=CALL_TIMEOUT_S):
                    pass
            else:
                call = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
                call(raw, metadata=md, timeout=CALL_TIMEOUT_S)
            return Outcome("OK", "", "")
        except grpc.RpcError as err:
            detail = error_detail(err)
            return Outcome(err.code().name, detail.code, detail.message)

    return send


def http_call(path: str, body: bytes | dict | None = None, method: str = "POST",
              headers: dict[str, str] | None = None) -> Callable[[object], Outcome]:  # fmt: skip
    """An HTTP request as it is written (no client adds a content type or fixes the body)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"} if headers is None else headers

    def send(stack) -> Outcome:
        conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=CALL_TIMEOUT_S)
        try:
            conn.request(method, path, body=data, headers=sent)
            reply = conn.getresponse()
            raw = reply.read()
        finally:
            conn.close()
        try:
            error = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            return Outcome(str(reply.status), "<not our JSON error>", raw[:300].decode(errors="replace"))
        return Outcome(str(reply.status), error.get("code", "<no code>"), error.get("message", ""))

    return send


# -- bad molecules: (id, format, text, error code, a piece of the message) ----------------------------

V2000 = ETHANOL_MOLBLOCK


def v3000(x: str = "0.0", count: int = 3, element: str = "C") -> str:
    return f"""ethanol
  molm3d          3D

  0  0  0  0  0  0  0  0  0  0999 V3000
M  V30 BEGIN CTAB
M  V30 COUNTS {count} 2 0 0 0
M  V30 BEGIN ATOM
M  V30 1 {element} {x} 0 0 0
M  V30 2 C 1.5 0 0 0
M  V30 3 O 2.0 1.4 0 0
M  V30 END ATOM
M  V30 BEGIN BOND
M  V30 1 1 1 2
M  V30 2 1 2 3
M  V30 END BOND
M  V30 END CTAB
M  END
"""


def xyz(*atoms: str, count: int | None = None) -> str:
    return "\n".join([str(len(atoms) if count is None else count), "frame", *atoms]) + "\n"


HETATM = "HETATM    1  C1  LIG A   1    {:>8}   0.000   0.000  1.00  0.00           {:<2}\n"

BAD_MOLECULES = [
    # SMILES syntax
    *(("smiles-syntax", "smiles", s, "invalid_smiles", "")
      for s in ("C1CC", "C(", "C)", "[Xx]", "C%", "C%99", "[C@@@@H]", "CCO.", "..", "C{}", "\x00", "é", "💥",
                "[nH]1cccc1x", "C=", "C((C))", "[CH3", "C]", "1CC", "C//C")),
    # parsed, chemically impossible
    *(("smiles-chemistry", "smiles", s, "sanitization_failed", "")
      for s in ("c1cccc1", "N(=O)(=O)(=O)=O", "[CH6]", "c", "C#C#C", "B1=B=B1", "n1ccccc1=O",
                "[Si](Cl)(Cl)(Cl)(Cl)Cl")),
    *(("smiles-element", "smiles", s, "unsupported_element", "atom dictionary") for s in ("[Og]", "*", "[U]", "C[Pu]")),
    ("smiles-no-heavy-atom", "smiles", "[H][H]", "empty_molecule", "no heavy atoms"),
    ("smiles-proton", "smiles", "[H+]", "empty_molecule", "no heavy atoms"),
    ("smiles-61-atoms", "smiles", "C" * 61, "too_many_atoms", "limit is 60"),
    ("smiles-180-atoms", "smiles", "N[C@@H](C)C(=O)O" * 30, "too_many_atoms", "limit is 60"),
    ("smiles-2001-chars", "smiles", "C" * 2001, "input_too_large", "limit is 2000"),
    ("smiles-1mb", "smiles", "C" * 1_000_000, "input_too_large", "limit is 2000"),
    ("smiles-two-lines", "smiles", "CCO\nCCN", "invalid_request", "expected one molecule"),
    ("smiles-comment-only", "smiles", "# nothing", "invalid_request", "expected one molecule"),
    ("smiles-empty", "smiles", "", "invalid_request", "empty"),
    ("smiles-blank", "smiles", " \t\n ", "invalid_request", "empty"),
    # SDF / MOL blocks
    ("v2000-nan", "sdf", V2000.replace("    0.0000    0.0000    0.0000 C", "       nan    0.0000    0.0000 C"),
     "parse_error", ""),
    ("v2000-all-nan", "mol", V2000.replace("    0.0000    0.0000    0.0000 C", "       nan       nan       nan C"),
     "parse_error", ""),
    *((f"v3000-{x}", fmt, v3000(x), "parse_error", "NaN or infinite") for x, fmt in
      (("nan", "mol"), ("inf", "sdf"), ("-inf", "mol"), ("NaN", "sdf"), ("1e400", "mol"))),
    ("v3000-count-mismatch", "mol", v3000(count=99), "parse_error", ""),
    ("v3000-unknown-element", "mol", v3000(element="Xx"), "parse_error", ""),
    ("v3000-no-ctab-end", "mol", v3000().replace("M  V30 END CTAB\n", ""), "parse_error", ""),
    ("v2000-unknown-element", "mol", V2000.replace(" O   0", " Xx  0"), "parse_error", "not found"),
    ("v2000-bond-to-nowhere", "sdf", V2000.replace("  1  2  1  0", "  1  9  1  0"), "parse_error", ""),
    ("v2000-count-too-big", "mol", V2000.replace("  3  2  0", "  9  2  0"), "parse_error", ""),
    ("v2000-truncated", "mol", "\n".join(V2000.splitlines()[:5]), "parse_error", ""),
    ("v2000-uranium", "mol", V2000.replace(" O   0", " U   0"), "unsupported_element", "atom dictionary"),
    ("mol-end-only", "mol", "M  END", "parse_error", ""),
    ("mol-garbage", "sdf", "garbage\n\n\nnot a molfile\nM  END\n$$$$\n", "parse_error", ""),
    ("mol-binary", "mol", "\x00\x01\x02\x7f", "parse_error", ""),
    ("sdf-two-records", "sdf", V2000 + "$$$$\n" + V2000, "invalid_request", "got 2 records"),
    ("sdf-no-records", "sdf", "$$$$\n$$$$\n", "invalid_request", "got 0 records"),
    # XYZ frames
    ("xyz-nan", "xyz", xyz("C 0 0 0", "C 1.5 0 0", "O nan 1.4 0"), "parse_error", ""),
    ("xyz-inf", "xyz", xyz("C 0 0 0", "C 1.5 0 0", "O inf 1.4 0"), "parse_error", ""),
    ("xyz-huge-coordinate", "xyz", xyz("C 0 0 0", "C 1e300 0 0"), "parse_error", ""),
    ("xyz-letters", "xyz", xyz("C a b c", "C 1.5 0 0"), "parse_error", ""),
    ("xyz-truncated", "xyz", xyz("C 0 0 0", count=3), "parse_error", "frame truncated"),
    ("xyz-no-count", "xyz", "C 0 0 0\n", "parse_error", "atom count"),
    ("xyz-negative-count", "xyz", "-1\n\n", "parse_error", "atom count"),
    ("xyz-huge-count", "xyz", "999999999999999999999\n\n", "parse_error", "frame truncated"),
    ("xyz-unknown-element", "xyz", xyz("Xx 0 0 0", "C 1.5 0 0"), "parse_error", "not found"),
    ("xyz-stacked-atoms", "xyz", xyz("C 0 0 0", "C 0 0 0"), "parse_error", "bond perception"),
    ("xyz-hydrogen-only", "xyz", xyz("H 0 0 0"), "empty_molecule", "no heavy atoms"),
    ("xyz-61-atoms", "xyz", xyz(*(f"C {1.5 * i} 0 0" for i in range(61))), "too_many_atoms", "limit is 60"),
    # PDB
    ("pdb-garbage", "pdb", "garbage", "empty_molecule", "no HETATM"),
    ("pdb-one-atom", "pdb", HETATM.format("0.000", "C") + "END\n", "empty_molecule", "no HETATM"),
    # formats
    *((f"format-{f}", f, "CCO", "unsupported_format", "unknown format")
      for f in ("cml", "inchi", "smi", "json", "png")),
]  # fmt: skip
# the SMILES families share an id: number them
BAD_MOLECULES = [
    (f"{name}-{i}" if sum(n == name for n, *_ in BAD_MOLECULES) > 1 else name, *rest)
    for i, (name, *rest) in enumerate(BAD_MOLECULES)
]


def mol(fmt: str, text: str, id: str = "") -> common_pb2.MoleculeInput:
    return common_pb2.MoleculeInput(format=fmt, text=text, id=id)


def _short(n: int = 4) -> common_pb2.DecodingOptions:
    return common_pb2.DecodingOptions(max_new_tokens=n)


# gateway method -> (path, streaming, request with this molecule, HTTP route)
GATEWAY = {
    "Caption": (False, lambda m: gateway_pb2.CaptionRequest(molecule=m, decoding=_short()), "/v1/caption"),
    "Ask": (False, lambda m: gateway_pb2.AskRequest(molecule=m, question="HOMO?", decoding=_short()), "/v1/ask"),
    "Embed": (False, lambda m: gateway_pb2.EmbedRequest(molecule=m), "/v1/embed"),
    "Retrieve": (False, lambda m: gateway_pb2.RetrieveRequest(molecule=m, k=3), "/v1/retrieve"),
    "CaptionStream": (True, lambda m: gateway_pb2.CaptionRequest(molecule=m, decoding=_short()), "/v1/caption:stream"),
    "AskStream": (True, lambda m: gateway_pb2.AskRequest(molecule=m, question="HOMO?", decoding=_short()),
                  "/v1/ask:stream"),
}  # fmt: skip
METHODS = list(GATEWAY)


def gateway_grpc(method: str, request: Message | bytes, metadata: list | None = None) -> Callable[[object], Outcome]:
    return grpc_call(f"/molm3d.v1.Molm3DService/{method}", request, "gateway", metadata, stream=GATEWAY[method][0])


def as_json(message: Message) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def molecule_cases() -> list[Case]:
    """Each bad molecule over gRPC and HTTP (a different gateway method each, so all six are covered)
    and to the conformer stage itself."""
    cases = []
    for i, (name, fmt, text, code, piece) in enumerate(BAD_MOLECULES):
        m = mol(fmt, text, id=f"rec-{i}")
        g, h = METHODS[i % len(METHODS)], METHODS[(i + 3) % len(METHODS)]
        cases += [
            Case(f"grpc-{g}-{name}", gateway_grpc(g, GATEWAY[g][1](m)), INVALID, code, piece),
            Case(f"http-{h}-{name}", http_call(GATEWAY[h][2], as_json(GATEWAY[h][1](m))), 400, code, piece),
            Case(f"conformer-{name}", grpc_call("/molm3d.v1.ConformerService/Generate", m, "conformer"), INVALID,
                 code, piece),
        ]  # fmt: skip
    return cases


# -- bad request fields ----------------------------------------------------------------------------

CCO = mol("smiles", "CCO")
# decoding field -> values refused at the gateway, before any stage is called
BAD_DECODINGS = [
    ("max_new_tokens", -1), ("max_new_tokens", -(2**31)), ("num_beams", -1), ("num_beams", -(2**31)),
    ("repetition_penalty", -1.0), ("repetition_penalty", -1e-6), ("repetition_penalty", math.nan),
    ("repetition_penalty", math.inf), ("repetition_penalty", -math.inf), ("length_penalty", math.nan),
    ("length_penalty", math.inf), ("length_penalty", -math.inf), ("no_repeat_ngram_size", -1),
    ("no_repeat_ngram_size", 17), ("no_repeat_ngram_size", 2**31 - 1),
]  # fmt: skip
# ... and values refused by the LM stage's limits (max_new_tokens_limit 512, max_beams 5)
LM_LIMITS = [("max_new_tokens", 513), ("max_new_tokens", 2**31 - 1), ("num_beams", 6), ("num_beams", 1000)]


def _json_number(v: float) -> float | str:
    return ("NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity") if not math.isfinite(v) else v


def decoding_cases() -> list[Case]:
    cases = []
    generating = ["Caption", "Ask", "CaptionStream", "AskStream"]
    for i, (field, value) in enumerate(BAD_DECODINGS + LM_LIMITS):
        lm = (field, value) in LM_LIMITS
        for j, transport in enumerate(("grpc", "http")):
            method = generating[(i + j) % len(generating)]
            request = GATEWAY[method][1](CCO)
            request.decoding.Clear()
            setattr(request.decoding, field, value)
            name = f"{transport}-{method}-decoding-{field}={value}"
            if transport == "grpc":
                send = gateway_grpc(method, request)
            else:
                body = as_json(request)
                body["decoding"] = {field: _json_number(value)}
                send = http_call(GATEWAY[method][2], body)
            cases.append(Case(name, send, INVALID if transport == "grpc" else 400, "invalid_request",
                              f"decoding.{field}", lm=lm))  # fmt: skip
    return cases


def field_cases() -> list[Case]:
    cases = []

    def both(name: str, method: str, request: Message, code: str, piece: str) -> None:
        cases.append(Case(f"grpc-{method}-{name}", gateway_grpc(method, request), INVALID, code, piece))
        cases.append(Case(f"http-{method}-{name}", http_call(GATEWAY[method][2], as_json(request)), 400, code, piece))

    for name, question, piece in (
        ("question-empty", "", "question is empty"),
        ("question-blank", " \n\t ", "question is empty"),
        ("question-2001", "x" * 2001, "limit is 2000"),
        ("question-1mb", "why? " * 200_000, "limit is 2000"),
    ):
        for method in ("Ask", "AskStream"):
            both(name, method, gateway_pb2.AskRequest(molecule=CCO, question=question), "invalid_request", piece)
    for method in METHODS:  # no molecule at all
        request = GATEWAY[method][1](CCO)
        request.ClearField("molecule")
        both("no-molecule", method, request, "invalid_request", "")
    for k in (-1, -1000, 1001, 2**31 - 1, -(2**31)):
        both(f"k={k}-molecule", "Retrieve", gateway_pb2.RetrieveRequest(molecule=CCO, k=k), "invalid_request", "k must")
        both(f"k={k}-text", "Retrieve", gateway_pb2.RetrieveRequest(text="an ester", k=k), "invalid_request", "k must")
    for name, text, piece in (("empty", "", "text is empty"), ("blank", "  \n", "text is empty"),
                              ("4001", "x" * 4001, "limit is 4000")):  # fmt: skip
        both(f"text-{name}", "Retrieve", gateway_pb2.RetrieveRequest(text=text, k=3), "invalid_request", piece)
    return cases


# -- tokens, applications, methods, protobuf bytes, deadlines --------------------------------------

BAD_TOKENS = [None, "", "Bearer", "Bearer ", "Bearer nope", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
              f"bearer {TOKEN}", f"Basic {TOKEN}", TOKEN, f"Token {TOKEN}"]  # fmt: skip
# undecodable as any request message: a varint that never ends, a string field of invalid UTF-8,
# a length past the end, a group that never closes
BAD_BYTES = [b"\xff\xff\xff", b"\x0a\x05\x0a\x03\xff\xfe\xfd", b"\x0a\x10\x0a", b"\x0b"]
INNER = [  # (path, app, request, streaming, LM)
    ("/molm3d.v1.ConformerService/Generate", "conformer", CCO, False, False),
    ("/molm3d.v1.EncoderService/Encode", "encoder", encoder_pb2.EncodeRequest(), False, False),
    ("/molm3d.v1.EncoderService/EncodeText", "encoder", encoder_pb2.EncodeTextRequest(text="x"), False, False),
    ("/molm3d.v1.RetrievalService/Search", "retrieval", retrieval_pb2.SearchRequest(), False, False),
    ("/molm3d.v1.LMService/Generate", "lm", lm_pb2.GenerateRequest(instruction="x"), False, True),
    ("/molm3d.v1.LMService/GenerateStream", "lm", lm_pb2.GenerateRequest(instruction="x"), True, True),
    ("/molm3d.v1.ConformerService/Depict", "conformer", conformer_pb2.DepictRequest(smiles=["CCO"]), False, False),
    ("/molm3d.v1.EncoderService/PredictProperties", "encoder", encoder_pb2.EncodeRequest(), False, False),
]


def auth_cases() -> list[Case]:
    cases = []
    for i, token in enumerate(BAD_TOKENS):
        headers = {"content-type": "application/json", **({"authorization": token} if token is not None else {})}
        md = [] if token is None else [("authorization", token)]
        g, h = METHODS[i % len(METHODS)], METHODS[(i + 2) % len(METHODS)]
        tag = "none" if token is None else repr(token.replace(TOKEN, "T"))
        cases += [
            Case(f"grpc-{g}-token-{tag}", gateway_grpc(g, GATEWAY[g][1](CCO), [("application", "gateway"), *md]),
                 UNAUTH, "unauthenticated"),
            Case(f"http-{h}-token-{tag}", http_call(GATEWAY[h][2], as_json(GATEWAY[h][1](CCO)), headers=headers),
                 401, "unauthenticated"),
            # the token is judged first: a bad body or bad bytes without it say nothing about them
            Case(f"http-{h}-token-{tag}-bad-body", http_call(GATEWAY[h][2], b"[[[", headers=headers), 401,
                 "unauthenticated"),
            Case(f"grpc-{g}-token-{tag}-bad-bytes", gateway_grpc(g, BAD_BYTES[i % len(BAD_BYTES)],
                 [("application", "gateway"), *md]), UNAUTH, "unauthenticated"),
        ]  # fmt: skip
        path, app, request, stream, lm = INNER[i % len(INNER)]
        cases.append(Case(f"{app}-token-{tag}", grpc_call(path, request, app, [("application", app), *md], stream),
                          UNAUTH, "unauthenticated", lm=lm))  # fmt: skip
    return cases


def undecodable_cases() -> list[Case]:
    """Bytes no protobuf decoder accepts: INVALID_ARGUMENT naming the message type, not UNKNOWN."""
    cases = []
    requests = {
        "Caption": "CaptionRequest", "Ask": "AskRequest", "Embed": "EmbedRequest", "Retrieve": "RetrieveRequest",
        "CaptionStream": "CaptionRequest", "AskStream": "AskRequest",
    }  # fmt: skip
    for method, message in requests.items():
        for j, raw in enumerate(BAD_BYTES):
            cases.append(Case(f"grpc-{method}-bytes-{j}", gateway_grpc(method, raw), INVALID, "invalid_request",
                              f"not a valid molm3d.v1.{message}"))  # fmt: skip
    for j, raw in enumerate(BAD_BYTES):  # the gateway's health Check too (token-free, like a kubelet probe)
        check = grpc_call("/grpc.health.v1.Health/Check", raw, "gateway", [])
        cases.append(Case(f"grpc-health-Check-bytes-{j}", check, INVALID, "invalid_request",
                          "not a valid grpc.health.v1.HealthCheckRequest"))  # fmt: skip
    for i, (path, app, _, stream, lm) in enumerate(INNER):
        raw = BAD_BYTES[i % len(BAD_BYTES)]
        cases.append(Case(f"{app}-{path.rsplit('/', 1)[1]}-bytes", grpc_call(path, raw, app, stream=stream), INVALID,
                          "invalid_request", "is not a valid molm3d.v1.", lm=lm))  # fmt: skip
    return cases


def routing_cases() -> list[Case]:
    """Unknown methods and services, another stage's method, missing or unknown application."""
    check = health_pb2.HealthCheckRequest()
    caption = GATEWAY["Caption"][1](CCO)
    unimplemented = [
        ("/molm3d.v1.Molm3DService/Nope", "gateway", caption, False, ""),
        ("/molm3d.v1.Molm3DService/caption", "gateway", caption, False, ""),
        ("/molm3d.v1.Nope/Caption", "gateway", caption, False, ""),
        ("/grpc.health.v1.Health/Nope", "gateway", check, False, ""),
        ("/molm3d.v1.ConformerService/Generate", "gateway", CCO, False, "does not serve"),
        ("/molm3d.v1.EncoderService/EncodeText", "conformer", encoder_pb2.EncodeTextRequest(text="x"), False,
         "does not serve"),
        ("/molm3d.v1.LMService/GenerateStream", "encoder", lm_pb2.GenerateRequest(instruction="x"), True,
         "does not serve"),
        ("/molm3d.v1.Molm3DService/AskStream", "retrieval", GATEWAY["AskStream"][1](CCO), True, "does not serve"),
        ("/molm3d.v1.Molm3DService/Retrieve", "encoder", GATEWAY["Retrieve"][1](CCO), False, "does not serve"),
        ("/grpc.health.v1.Health/List", "gateway", health_pb2.HealthListRequest(), False, "does not serve"),
        ("/grpc.health.v1.Health/Watch", "gateway", check, True, "does not serve"),
        ("/grpc.health.v1.Health/Check", "encoder", check, False, "does not serve"),
        ("/grpc.health.v1.Health/Check", "retrieval", check, False, "does not serve"),
        ("/molm3d.v1.ConformerService/Depict", "gateway", conformer_pb2.DepictRequest(smiles=["CCO"]), False,
         "does not serve"),
        ("/molm3d.v1.ConformerService/Depict", "encoder", conformer_pb2.DepictRequest(), False, "does not serve"),
        ("/molm3d.v1.EncoderService/PredictProperties", "conformer", encoder_pb2.EncodeRequest(), False,
         "does not serve"),
    ]  # fmt: skip
    cases = [
        Case(f"grpc-{app}{path}", grpc_call(path, request, app, stream=stream), UNIMPLEMENTED, "unimplemented", piece)
        for path, app, request, stream, piece in unimplemented
    ]
    for app in (None, "", "nope", "GATEWAY", "gateway "):
        md = [AUTH] if app is None else [("application", app), AUTH]
        for method in ("Caption", "AskStream"):
            cases.append(Case(f"grpc-{method}-application-{app!r}", gateway_grpc(method, GATEWAY[method][1](CCO), md),
                              NOT_FOUND, "not_found"))  # fmt: skip
    for timeout in ("abc", "1e", "ten seconds", "--5", "-5", "0", "NaN", "inf"):
        for method in ("Ask", "CaptionStream"):
            md = [("application", "gateway"), AUTH, ("molm3d-timeout-ms", timeout)]
            cases.append(Case(f"grpc-{method}-timeout-{timeout!r}", gateway_grpc(method, GATEWAY[method][1](CCO), md),
                              INVALID, "invalid_request", "molm3d-timeout-ms"))  # fmt: skip
    return cases


# -- inner stages called directly -------------------------------------------------------------------


def tensor(shape: tuple[int, ...], values: list[float] | None = None, dtype: str = "float32",
           data: bytes | None = None) -> common_pb2.Tensor:  # fmt: skip
    n = math.prod(shape)
    values = [0.1] * n if values is None else values
    packed = struct.pack(f"<{len(values)}f", *values) if data is None else data
    return common_pb2.Tensor(shape=list(shape), dtype=dtype, data=packed)


def conformer(elements: list[str], coords: list[float]) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(conformer=common_pb2.Conformer(elements=elements, coordinates=coords))


def stage_cases(dims: dict[str, int]) -> list[Case]:
    """Messages that only a caller of an inner stage can send (the gateway never builds them)."""
    q, h, e = dims["query_tokens"], dims["lm_hidden"], dims["embed_dim"]
    encoder = [
        ("no-atoms", conformer([], []), "invalid_request", "no atoms"),
        ("coords-short", conformer(["C", "O"], [0.0] * 5), "invalid_request", "need 6 coordinates"),
        ("coords-long", conformer(["C"], [0.0] * 4), "invalid_request", "need 3 coordinates"),
        ("coords-nan", conformer(["C", "O"], [0, 0, 0, math.nan, 0, 0]), "invalid_request", "NaN"),
        ("coords-inf", conformer(["C", "O"], [0, 0, 0, 1.2, -math.inf, 0]), "invalid_request", "NaN"),
        ("element-unknown", conformer(["C", "Xx"], [0, 0, 0, 1.2, 0, 0]), "unsupported_element", "Xx"),
        ("element-empty", conformer(["C", ""], [0, 0, 0, 1.2, 0, 0]), "unsupported_element", ""),
        ("hydrogen-only", conformer(["H", "H"], [0, 0, 0, 0.7, 0, 0]), "empty_molecule", "no heavy atoms"),
    ]
    cases = [  # PredictProperties makes Encode's checks
        Case(f"encoder-{method}-{n}", grpc_call(f"/molm3d.v1.EncoderService/{method}", r, "encoder"), INVALID, c, p)
        for method in ("Encode", "PredictProperties")
        for n, r, c, p in encoder
    ]
    search = "/molm3d.v1.RetrievalService/Search"
    retrieval = [
        ("no-query", retrieval_pb2.SearchRequest(k=3), "give molecule_embedding or text_embedding"),
        ("k-negative", retrieval_pb2.SearchRequest(text_embedding=tensor((e,)), k=-1), "k must"),
        ("k-1001", retrieval_pb2.SearchRequest(text_embedding=tensor((e,)), k=1001), "k must"),
        (
            "dtype",
            retrieval_pb2.SearchRequest(text_embedding=tensor((e,), dtype="float64")),
            "unsupported tensor dtype",
        ),
        ("short-data", retrieval_pb2.SearchRequest(text_embedding=tensor((e,), data=b"\0" * 7)), "needs"),
        ("negative-shape", retrieval_pb2.SearchRequest(text_embedding=tensor((-1, e), data=b"")), "needs"),
        ("text-2d", retrieval_pb2.SearchRequest(text_embedding=tensor((2, e))), "must have shape"),
        ("molecule-1d", retrieval_pb2.SearchRequest(molecule_embedding=tensor((e,))), "must have shape"),
        ("wrong-dim", retrieval_pb2.SearchRequest(molecule_embedding=tensor((q, e + 1))), "must have shape"),
        ("nan", retrieval_pb2.SearchRequest(text_embedding=tensor((e,), [math.nan] * e)), "NaN"),
        ("inf", retrieval_pb2.SearchRequest(molecule_embedding=tensor((q, e), [math.inf] * (q * e))), "NaN"),
    ]
    cases += [Case(f"retrieval-Search-{n}", grpc_call(search, r, "retrieval"), INVALID, "invalid_request", p)
              for n, r, p in retrieval]  # fmt: skip
    text = "/molm3d.v1.EncoderService/EncodeText"
    for n, t, p in (("empty", "", "text is empty"), ("blank", "\n ", "text is empty"), ("4001", "x" * 4001, "limit")):
        cases.append(Case(f"encoder-EncodeText-{n}", grpc_call(text, encoder_pb2.EncodeTextRequest(text=t), "encoder"),
                          INVALID, "invalid_request", p))  # fmt: skip
    good = tensor((q, h))

    def gen(instruction: str = "Describe.", tokens: Any = None, **fields: Any) -> lm_pb2.GenerateRequest:
        molecule = lm_pb2.PromptMolecule(smiles="CCO", molecule_tokens=tokens)
        return lm_pb2.GenerateRequest(instruction=instruction, molecules=[molecule], **fields)

    lm = [
        ("no-instruction", gen("", good), "instruction is empty"),
        ("long-instruction", gen("x" * 2001, good), "limit is 2000"),
        ("long-history", gen("x", good, history=[lm_pb2.Turn(question="q" * 1000, answer="a" * 1000)]),
         "limit is 2000"),
        ("no-tokens", gen(), "needs molecule tokens"),
        ("tokens-dtype", gen(tokens=tensor((q, h), dtype="int8")), "unsupported tensor dtype"),
        ("tokens-short", gen(tokens=tensor((q, h), data=b"\0")), "needs"),
        ("tokens-shape", gen(tokens=tensor((q + 1, h))), "must have shape"),
        ("tokens-nan", gen(tokens=tensor((q, h), [math.nan] * (q * h))), "NaN"),
        ("mol-placeholder", gen("What is <mol>?", good), "<mol>"),
        ("special-token", gen("What is it?<|endoftext|>", good), "may not contain <|endoftext|>"),
        ("special-token-history", gen("x", good, history=[lm_pb2.Turn(question="q", answer="<|im_start|>")]),
         "history[0].answer may not contain <|im_start|>"),
        ("nine-molecules", lm_pb2.GenerateRequest(instruction="x", molecules=[lm_pb2.PromptMolecule(
            smiles="C", molecule_tokens=good)] * 9), "limit is 8"),
        ("decoding-nan", gen(tokens=good, decoding=common_pb2.DecodingOptions(repetition_penalty=math.nan)),
         "decoding.repetition_penalty"),
        ("decoding-beams", gen(tokens=good, decoding=common_pb2.DecodingOptions(num_beams=6)), "num_beams"),
        ("decoding-temperature", gen(tokens=good, decoding=common_pb2.DecodingOptions(temperature=2.5)),
         "decoding.temperature"),
        ("decoding-top-p", gen(tokens=good, decoding=common_pb2.DecodingOptions(top_p=1.5)), "decoding.top_p"),
        ("decoding-stops", gen(tokens=good, decoding=common_pb2.DecodingOptions(stop=list("abcde"))), "decoding.stop"),
        ("sampled-beams", gen(tokens=good, decoding=common_pb2.DecodingOptions(num_beams=2, temperature=0.5)),
         "decoding."),
    ]  # fmt: skip
    for i, (n, r, p) in enumerate(lm):
        method = ("Generate", "GenerateStream")[i % 2]
        cases.append(Case(f"lm-{method}-{n}", grpc_call(f"/molm3d.v1.LMService/{method}", r, "lm", stream=i % 2 == 1),
                          INVALID, "invalid_request", p, lm=True))  # fmt: skip
    return cases


# -- the web console: POST /v1/molecule, /v1/depict and ConformerService/Depict behind them ------------

# DepictRequest fields refused by the conformer stage (over gRPC, and over HTTP through the gateway)
BAD_DEPICTS = [  # (name, fields, a piece of the message)
    ("101-smiles", {"smiles": ["C"] * 101}, "limit is 100"),
    ("10000-smiles", {"smiles": ["CCO"] * 10_000}, "limit is 100"),
    ("101-bad-smiles", {"smiles": ["C1CC"] * 101}, "limit is 100"),  # counted before any is drawn
    ("width-5", {"smiles": ["CCO"], "width": 5}, "width"),
    ("width-15", {"smiles": ["CCO"], "width": 15}, "width"),
    ("width-2001", {"smiles": ["CCO"], "width": 2001}, "width"),
    ("width-negative", {"smiles": ["CCO"], "width": -1}, "width"),
    ("width-min-int", {"smiles": ["CCO"], "width": -(2**31)}, "width"),
    ("height-15", {"smiles": ["CCO"], "height": 15}, "height"),
    ("height-100000", {"smiles": ["CCO"], "height": 100_000}, "height"),
    ("height-max-int", {"smiles": ["CCO"], "height": 2**31 - 1}, "height"),
    ("height-negative", {"smiles": [], "height": -180}, "height"),  # checked with no SMILES too
    ("both-1", {"smiles": ["CCO"], "width": 1, "height": 1}, "width"),
]
DEPICT_WRONG_TYPES = [  # (body, a piece of the message): refused by the gateway's JSON parsing
    ({"smiles": "CCO"}, "bad JSON body"),
    ({"smiles": {"a": "CCO"}}, "bad JSON body"),
    ({"smiles": [1, 2]}, "bad JSON body"),
    ({"smiles": [["CCO"]]}, "bad JSON body"),
    ({"smiles": ["CCO"], "width": "wide"}, "width"),
    ({"smiles": ["CCO"], "width": 1.5}, "width"),
    ({"smiles": ["CCO"], "height": 1e12}, "height"),
    ({"smiles": ["CCO"], "height": [180]}, "height"),
    ({"smiles": ["CCO"], "colour": "red"}, "colour"),
    ({"molecule": {"text": "CCO"}}, "molecule"),
]
MOLECULE_WRONG_TYPES = [  # (body, a piece of the message)
    ({"molecule": "CCO"}, "molecule must be a JSON object"),
    ({"molecule": ["CCO"]}, "molecule must be a JSON object"),
    ({"molecule": {"text": 5}}, "text"),
    ({"molecule": {"text": "CCO", "format": 1}}, "format"),
    ({"molecule": {"text": "CCO", "id": ["a"]}}, "id"),
    ({"molecule": {"smiles": "CCO"}}, "smiles"),
    ({"molecule": {"text": "CCO"}, "question": "HOMO?"}, "question"),
    ({"smiles": ["CCO"]}, "smiles"),
]


def console_cases() -> list[Case]:
    """The console's routes: bad molecules and bodies, bad depiction requests over HTTP and straight to
    the conformer stage's Depict, and the routes' token, method, path and deadline checks."""
    cases = []
    for name, fmt, text, code, piece in BAD_MOLECULES:  # /v1/molecule reads the molecule as Embed does
        body = {"molecule": {"format": fmt, "text": text, "id": "m"}}
        cases.append(Case(f"http-molecule-{name}", http_call("/v1/molecule", body), 400, code, piece))
    for name, body, piece in (("no-molecule", {}, "molecule text is empty"),
                              ("empty-body", b"", "molecule text is empty"),
                              ("blank-text", {"molecule": {"text": "  "}}, "molecule text is empty")):  # fmt: skip
        cases.append(Case(f"http-molecule-{name}", http_call("/v1/molecule", body), 400, "invalid_request", piece))
    for i, (body, piece) in enumerate(MOLECULE_WRONG_TYPES):
        cases.append(Case(f"http-molecule-wrong-type-{i}", http_call("/v1/molecule", body), 400, "invalid_request",
                          piece))  # fmt: skip
    for name, fields, piece in BAD_DEPICTS:
        request = conformer_pb2.DepictRequest(**fields)
        cases += [
            Case(f"conformer-Depict-{name}", grpc_call("/molm3d.v1.ConformerService/Depict", request, "conformer"),
                 INVALID, "invalid_request", piece),
            Case(f"http-depict-{name}", http_call("/v1/depict", fields), 400, "invalid_request", piece),
        ]  # fmt: skip
    for i, (body, piece) in enumerate(DEPICT_WRONG_TYPES):
        cases.append(Case(f"http-depict-wrong-type-{i}", http_call("/v1/depict", body), 400, "invalid_request", piece))
    for route in ("/v1/molecule", "/v1/depict"):
        tag = route.rsplit("/", 1)[1]
        for i, body in enumerate((*NOT_OBJECTS[:4], *NOT_JSON[:4], *BAD_UTF8[:2], DEEP[0])):
            cases.append(Case(f"http-{tag}-bad-body-{i}", http_call(route, body), 400, "invalid_request", "bad JSON"))
        for token in (None, "Bearer nope", TOKEN):  # the token before the body
            headers = {"content-type": "application/json", **({"authorization": token} if token else {})}
            label = "none" if token is None else repr(token.replace(TOKEN, "T"))
            cases += [
                Case(f"http-{tag}-token-{label}", http_call(route, {"smiles": ["CCO"]} if tag == "depict" else
                     {"molecule": {"text": "CCO"}}, headers=headers), 401, "unauthenticated"),
                Case(f"http-{tag}-token-{label}-bad-body", http_call(route, b"[[[", headers=headers), 401,
                     "unauthenticated"),
            ]  # fmt: skip
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            cases.append(Case(f"http-{method}-{route}", http_call(route, None if method == "GET" else b"{}", method),
                              405, "method_not_allowed"))  # fmt: skip
        for path in (f"{route}/x", f"{route}:stream", route.upper()):
            cases.append(Case(f"http-route-{path}", http_call(path, {}), 404, "not_found"))
        for timeout in ("abc", "-5", "NaN"):
            headers = {"authorization": f"Bearer {TOKEN}", "x-molm3d-timeout-ms": timeout}
            body = {"smiles": ["CCO"]} if tag == "depict" else {"molecule": {"text": "CCO"}}
            cases.append(Case(f"http-{tag}-timeout-{timeout!r}", http_call(route, body, headers=headers), 400,
                              "invalid_request", "molm3d-timeout-ms"))  # fmt: skip
    return cases


# -- HTTP bodies, content types, routes -------------------------------------------------------------

NOT_OBJECTS = [b"42", b"-0", b"1.5e308", b"null", b"true", b"false", b'"CCO"', b"[]", b'[{"molecule": {}}]',
               b"NaN", b"Infinity"]  # fmt: skip
NOT_JSON = [b"{", b"}", b"{'molecule': 1}", b'{"molecule":}', b"{}{}", b'{"a": 1,}', b"   ", b"\x00",
            b'{"molecule": {"text": "CCO"}', b"molecule=CCO", b"<xml/>", b"\xef\xbb\xbf"]  # fmt: skip
BAD_UTF8 = [b"\xff", b'{"molecule": {"text": "\xc3\x28"}}', b'{"question": "\xed\xa0\x80"}', b"\xc0\xaf",
            b'{"molecule": {"text": "\\ud800"}}', b'{"question": "\\udfff"}']  # fmt: skip
DEEP = [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"molecule": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"decoding": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001]  # fmt: skip
WRONG_TYPES = [  # (route, body, a piece of the message)
    ("/v1/caption", {"molecule": "CCO"}, "molecule must be a JSON object"),
    ("/v1/ask", {"molecule": ["CCO"], "question": "HOMO?"}, "molecule must be a JSON object"),
    ("/v1/embed", {"molecule": 5}, "molecule must be a JSON object"),
    ("/v1/retrieve", {"molecule": True}, "molecule must be a JSON object"),
    ("/v1/caption", {"molecule": {"text": 5}}, "text"),
    ("/v1/caption", {"molecule": {"text": ["CCO"]}}, "text"),
    ("/v1/embed", {"molecule": {"text": "CCO", "format": 1}}, "format"),
    ("/v1/embed", {"molecule": {"text": "CCO", "id": {"a": 1}}}, "id"),
    ("/v1/ask", {"molecule": {"text": "CCO"}, "question": 5}, "question"),
    ("/v1/ask", {"molecule": {"text": "CCO"}, "question": ["HOMO?"]}, "question"),
    ("/v1/ask", {"molecule": {"text": "CCO"}, "question": {"q": "HOMO?"}}, "question"),
    ("/v1/caption", {"molecule": {"text": "CCO"}, "decoding": []}, "decoding must be a JSON object"),
    ("/v1/caption", {"molecule": {"text": "CCO"}, "decoding": "greedy"}, "decoding must be a JSON object"),
    ("/v1/caption", {"molecule": {"text": "CCO"}, "decoding": {"max_new_tokens": "ten"}}, "max_new_tokens"),
    ("/v1/caption", {"molecule": {"text": "CCO"}, "decoding": {"max_new_tokens": 1.5}}, "max_new_tokens"),
    ("/v1/caption", {"molecule": {"text": "CCO"}, "decoding": {"max_new_tokens": True}}, "max_new_tokens"),
    ("/v1/caption", {"molecule": {"text": "CCO"}, "decoding": {"max_new_tokens": 1e30}}, "max_new_tokens"),
    ("/v1/caption:stream", {"molecule": {"text": "CCO"}, "decoding": {"num_beams": 2**31}}, "num_beams"),
    (
        "/v1/ask:stream",
        {"molecule": {"text": "CCO"}, "question": "HOMO?", "decoding": {"repetition_penalty": "x"}},
        "repetition_penalty",
    ),
    (
        "/v1/ask",
        {"molecule": {"text": "CCO"}, "question": "HOMO?", "decoding": {"length_penalty": [1]}},
        "length_penalty",
    ),
    ("/v1/retrieve", {"text": "an ester", "k": "many"}, "k"),
    ("/v1/retrieve", {"text": "an ester", "k": 2.5}, "k"),
    ("/v1/retrieve", {"text": "an ester", "k": 1e12}, "k"),
    ("/v1/retrieve", {"text": 42, "k": 3}, "text"),
    ("/v1/retrieve", {"text": "an ester", "molecule": {"text": "CCO"}}, "oneof"),
    ("/v1/caption", {"molecule": {"text": "CCO"}, "unknown": 1}, "unknown"),
    ("/v1/caption", {"molecule": {"smiles": "CCO"}}, "smiles"),
    ("/v1/ask", {"molecule": {"text": "CCO"}, "question": "HOMO?", "temperature": 0.7}, "temperature"),
    ("/v1/embed", {"molecule": {"text": "CCO"}, "decoding": {}}, "decoding"),
]
CONTENT_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/xml",
                 "application/octet-stream", "application/grpc", "text/plain; charset=latin-1", ""]  # fmt: skip
ROUTE_PATHS = ["/v1/nope", "/v1/caption/extra", "/v2/caption", "/v1/CAPTION", "/v1/caption:nope", "/v1/ask:streaming",
               "/v1/health", "/v1/health/live/x", "/stages/bulk", "/molm3d.v1.Molm3DService/Caption",
               "/v1/caption%00", "/..%2f..%2fetc/passwd"]  # fmt: skip


def http_cases() -> list[Case]:
    routes = [r for *_, r in GATEWAY.values()]
    cases = []
    for i, body in enumerate(NOT_OBJECTS):
        cases.append(Case(f"http-not-object-{i}", http_call(routes[i % 6], body), 400, "invalid_request",
                          "expected a JSON object"))  # fmt: skip
    for i, body in enumerate(NOT_JSON + BAD_UTF8):
        cases.append(Case(f"http-not-json-{i}", http_call(routes[i % 6], body), 400, "invalid_request", "bad JSON"))
    for i, body in enumerate(DEEP):
        cases.append(Case(f"http-deep-{i}", http_call(routes[i % 6], body), 400, "invalid_request", "bad JSON"))
    for i, (route, body, piece) in enumerate(WRONG_TYPES):
        cases.append(Case(f"http-wrong-type-{i}", http_call(route, body), 400, "invalid_request", piece))
    caption = b'{"molecule": ' + json.dumps({"text": "CCO"}).encode()  # cut short
    for i, ctype in enumerate(CONTENT_TYPES):
        headers = {"authorization": f"Bearer {TOKEN}", **({"content-type": ctype} if ctype else {})}
        body = [b"molecule=CCO", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nCCO\r\n--x--\r\n", b"<a/>",
                gateway_pb2.CaptionRequest(molecule=CCO).SerializeToString(), b"\x00\x00\x00\x00\x05", caption,
                b""][i]  # fmt: skip
        # the body is JSON whatever the type says: these are not JSON (an empty body is an empty request)
        piece = "molecule text is empty" if not body else "bad JSON"
        cases.append(Case(f"http-content-type-{ctype or 'none'}", http_call(routes[i % 6], body, headers=headers),
                          400, "invalid_request", piece))  # fmt: skip
    for path in ROUTE_PATHS:
        cases.append(Case(f"http-route-{path}", http_call(path, {"molecule": {"text": "CCO"}}), 404, "not_found"))
    for app in ("conformer", "encoder", "lm", "retrieval"):  # inner stages speak gRPC only
        cases.append(Case(f"http-stage-{app}", http_call(f"/stages/{app}", {}), 404, "not_found", "gRPC only",
                          lm=app == "lm"))  # fmt: skip
    for i, method in enumerate(("GET", "PUT", "DELETE", "PATCH", "OPTIONS")):
        for route in (routes[i % 6], routes[(i + 3) % 6]):
            cases.append(Case(f"http-{method}-{route}", http_call(route, None if method == "GET" else b"{}", method),
                              405, "method_not_allowed"))  # fmt: skip
    for timeout in ("abc", "1e", "--5", "-5", "NaN"):
        headers = {"authorization": f"Bearer {TOKEN}", "x-molm3d-timeout-ms": timeout}
        cases.append(Case(f"http-timeout-{timeout!r}", http_call("/v1/embed", {"molecule": {"text": "CCO"}},
                          headers=headers), 400, "invalid_request", "molm3d-timeout-ms"))  # fmt: skip
    return cases


# -- running ----------------------------------------------------------------------------------------


def tiny_dims() -> dict[str, int]:
    """Tensor sizes of the stack's checkpoint (the conftest's tiny preset)."""
    from molm3d_core.models import MoLM3DConfig

    config = MoLM3DConfig.preset_config("tiny")
    return {
        "query_tokens": config.qformer.num_query_tokens,
        "lm_hidden": config.lm.random_init["hidden_size"],
        "embed_dim": config.embed_dim,
    }


def all_cases() -> list[Case]:
    cases = [*molecule_cases(), *decoding_cases(), *field_cases(), *auth_cases(), *undecodable_cases(),
             *routing_cases(), *stage_cases(tiny_dims()), *http_cases(), *console_cases()]  # fmt: skip
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    return cases


CASES = {c.id: c for c in all_cases()}


@pytest.fixture(scope="module")
def outcomes(served) -> dict[str, Outcome]:
    """Every case sent: most 16 at a time, those that reach the LM two at a time."""
    results: dict[str, Outcome] = {}
    for lm, workers in ((False, 16), (True, 2)):
        batch = [c for c in CASES.values() if c.lm == lm]
        with ThreadPoolExecutor(workers) as pool:
            for case, outcome in zip(batch, pool.map(lambda c: c.send(served), batch), strict=True):
                results[case.id] = outcome
    return results


def test_the_suite_holds_at_least_200_requests_over_both_transports():
    over_grpc = sum(isinstance(c.status, grpc.StatusCode) for c in CASES.values())
    assert over_grpc >= 100 and len(CASES) - over_grpc >= 100, (over_grpc, len(CASES))


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_request_gets_a_typed_error(outcomes, case_id):
    case, got = CASES[case_id], outcomes[case_id]
    want = case.status.name if isinstance(case.status, grpc.StatusCode) else str(case.status)
    assert (got.status, got.code) == (want, case.code), got
    assert case.contains in got.message, got
    assert not INTERNALS.search(got.message), got


def test_the_stack_still_serves_after_the_suite(served, outcomes):
    from molm3d_services.client import GatewayClient

    client = GatewayClient(served.target, token=TOKEN, timeout_s=120)
    try:
        asked = client.ask(CCO, "What is its HOMO energy?", max_new_tokens=4)
        captioned = client.caption(mol("smiles", "CC(=O)Oc1ccccc1C(=O)O", id="asp"), max_new_tokens=4)
    finally:
        client.close()
    assert asked.smiles == "CCO" and 1 <= asked.num_tokens <= 4
    assert captioned.record_id == "asp" and 1 <= captioned.num_tokens <= 4
    conn = http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=30)
    conn.request("GET", "/v1/health/ready")
    assert conn.getresponse().status == 200
    conn.close()

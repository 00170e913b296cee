"""The served stack, end to end over real gRPC channels and HTTP (tiny model, real Ray Serve)."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from molm3d.v1 import (
    common_pb2,
    conformer_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    gateway_pb2,
    lm_pb2,
    lm_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)

from molm3d_services.client import GatewayClient
from molm3d_services.common.errors import error_detail
from molm3d_services.common.tensors import from_proto

from .conftest import TOKEN

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
AUTH = ("authorization", f"Bearer {TOKEN}")


def meta(app: str) -> list[tuple[str, str]]:
    return [("application", app), AUTH]


def mol(text: str, fmt: str = "smiles", id: str = "") -> common_pb2.MoleculeInput:
    return common_pb2.MoleculeInput(text=text, format=fmt, id=id)


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def client(served):
    c = GatewayClient(served.target, token=TOKEN, timeout_s=120)
    yield c
    c.close()


def http_json(
    url: str, body: dict | bytes | None = None, token: str | None = TOKEN, method: str | None = None
) -> tuple[int, dict]:
    """(status, JSON reply) of a GET (no body) or a POST of `body` (bytes: sent as they are), unless
    `method` says otherwise."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if body is not None else "GET"))
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- every stage over gRPC -------------------------------------------------------------------------


def test_each_stage_answers_over_grpc(channel):
    conformer = conformer_pb2_grpc.ConformerServiceStub(channel).Generate(
        mol(ASPIRIN, id="asp"), metadata=meta("conformer")
    )
    assert conformer.record_id == "asp" and conformer.inchikey == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N"
    assert list(conformer.elements).count("C") == 9 and len(conformer.coordinates) == 3 * len(conformer.elements)
    assert conformer.method.startswith("etkdg_v3")

    encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
    encoding = encoder.Encode(encoder_pb2.EncodeRequest(conformer=conformer), metadata=meta("encoder"))
    tokens = from_proto(encoding.molecule_tokens)
    embedding = from_proto(encoding.retrieval_embedding)
    assert tokens.ndim == 2 and embedding.ndim == 2 and tokens.shape[0] == embedding.shape[0]
    assert embedding.norm(dim=-1).sub(1).abs().max() < 1e-4  # unit vectors
    text = from_proto(
        encoder.EncodeText(
            encoder_pb2.EncodeTextRequest(text="an aromatic ester"), metadata=meta("encoder")
        ).retrieval_embedding
    )
    assert text.shape == (embedding.shape[1],)

    lm = lm_pb2_grpc.LMServiceStub(channel)
    request = lm_pb2.GenerateRequest(
        instruction="Describe the input molecule.",
        molecules=[lm_pb2.PromptMolecule(smiles=conformer.smiles, molecule_tokens=encoding.molecule_tokens)],
        decoding=common_pb2.DecodingOptions(max_new_tokens=6),
    )
    result = lm.Generate(request, metadata=meta("lm"))
    assert result.finish_reason in ("eos", "length") and 1 <= result.num_tokens <= 6

    found = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(
        retrieval_pb2.SearchRequest(molecule_embedding=encoding.retrieval_embedding, k=3), metadata=meta("retrieval")
    )
    assert len(found.hits) <= 3


def test_gateway_equals_in_process_library(client, tiny_checkpoint):
    from molm3d_core.checkpoints import load_model
    from molm3d_core.chem import parse_smiles
    from molm3d_core.decoding import default_decoding
    from molm3d_core.models import DecodingOptions
    from molm3d_core.pipeline import Predictor

    model, info = load_model(tiny_checkpoint, device="cpu", dtype="float32")
    # Each side decodes a task with its default (captions: repetition penalty 1.2; answers: none).
    predictor = Predictor(model, info)
    for smiles in (ASPIRIN, "CCO"):
        local = next(predictor.run([parse_smiles(smiles, record_id="m")], "caption"))
        served = client.caption(mol(smiles, id="m"))  # no options: both sides take the caption default
        assert (served.text, served.smiles, served.conformer_method, served.finish_reason) == (
            local["caption"],
            local["smiles"],
            local["conformer_method"],
            local["finish_reason"],
        )
        assert served.model_id == info.model_id and served.request_id
        asked = client.ask(mol(smiles), "What is the HOMO energy?", max_new_tokens=12)
        local_ask = next(
            Predictor(model, info, decoding=default_decoding("ask", max_new_tokens=12)).run(
                [parse_smiles(smiles, record_id="m")], "ask", "What is the HOMO energy?"
            )
        )
        assert asked.text == local_ask["answer"]
    # n-gram blocking travels with the request (and is part of the LM batch key)
    blocked = Predictor(model, info, decoding=DecodingOptions(max_new_tokens=12, no_repeat_ngram_size=1))
    local = next(blocked.run([parse_smiles(ASPIRIN, record_id="m")], "caption"))
    served = client.caption(mol(ASPIRIN, id="m"), max_new_tokens=12, no_repeat_ngram_size=1)
    assert served.text == local["caption"]


def test_calls_get_their_task_default_where_the_request_leaves_a_field_unset():
    from molm3d_core.decoding import default_decoding
    from molm3d_services.gateway.deployment import task_decoding

    # (the tiny random LM never repeats a token, so the served texts cannot show the penalty)
    caption = task_decoding(common_pb2.DecodingOptions(num_beams=2), "caption")
    assert caption == common_pb2.DecodingOptions(**{**vars(default_decoding("caption")), "num_beams": 2})
    assert caption.repetition_penalty > 1.0 and caption.max_new_tokens == 128
    ask = task_decoding(common_pb2.DecodingOptions(), "ask")
    assert ask.repetition_penalty == 1.0 and ask.max_new_tokens == 64 and ask.HasField("no_repeat_ngram_size")
    given = common_pb2.DecodingOptions(max_new_tokens=7, num_beams=1, repetition_penalty=1.05, length_penalty=0.5,
                                       no_repeat_ngram_size=0, temperature=0.7, top_p=0.9, seed=3)  # fmt: skip
    assert task_decoding(given, "caption") == given


def test_streaming_yields_the_same_text(client):
    request = gateway_pb2.CaptionRequest(molecule=mol(ASPIRIN), decoding=common_pb2.DecodingOptions(max_new_tokens=16))
    whole = client.stub.Caption(request, metadata=client.metadata)
    chunks = list(client.stub.CaptionStream(request, metadata=client.metadata))
    assert chunks[-1].HasField("answer") and all(not c.HasField("answer") for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == whole.text == chunks[-1].answer.text
    assert chunks[-1].answer.num_tokens == whole.num_tokens


def encoder_batch_stats(metrics_port: int) -> tuple[float, float]:
    """(model calls, requests served) of the encoder stage, from its batch-size histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()

    def total(name: str) -> float:
        return sum(
            float(v) for v in re.findall(rf'ray_molm3d_batch_size_{name}\{{[^}}]*stage="encoder"[^}}]*\}} (\S+)', text)
        )

    return total("count"), total("sum")


def test_concurrent_requests_are_batched_and_answered_individually(served, channel):
    stub = conformer_pb2_grpc.ConformerServiceStub(channel)
    smiles = ["C" * n for n in range(1, 17)]
    conformers = [stub.Generate(mol(s, id=s), metadata=meta("conformer")) for s in smiles]
    encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
    calls_before, served_before = encoder_batch_stats(served.metrics_port)
    with ThreadPoolExecutor(16) as pool:
        encodings = list(
            pool.map(
                lambda c: encoder.Encode(encoder_pb2.EncodeRequest(conformer=c), metadata=meta("encoder")), conformers
            )
        )
    assert [e.record_id for e in encodings] == smiles  # each got its own answer

    # Batching is visible in the stage's batch-size histogram (Ray exports metrics every few seconds).
    # Export is periodic and eventually consistent: judge on what has arrived after at most 60 s.
    deadline = time.monotonic() + 60
    while True:
        calls, requests = encoder_batch_stats(served.metrics_port)
        if requests - served_before >= 16 or time.monotonic() > deadline:
            break
        time.sleep(2)
    n_requests, n_calls = requests - served_before, calls - calls_before
    assert n_requests >= 8, f"encoder metrics show only {n_requests} of 16 requests after 60 s"
    assert n_calls < n_requests, f"{n_requests} requests took {n_calls} model calls: no batching"
    alone = encoder.Encode(encoder_pb2.EncodeRequest(conformer=conformers[5]), metadata=meta("encoder"))
    assert (from_proto(alone.molecule_tokens) - from_proto(encodings[5].molecule_tokens)).abs().max() < 1e-4


# -- retrieval -------------------------------------------------------------------------------------


def test_retrieve_by_molecule_and_by_text_equals_the_library(client, tiny_checkpoint, text_index):
    from molm3d_core.retrieval import Retriever

    local = Retriever.open(text_index, checkpoint=tiny_checkpoint, device="cpu", dtype="float32")
    served = client.retrieve(molecule=mol(ASPIRIN), k=5)
    expected = local.search(smiles=ASPIRIN, k=5)
    assert served.index_version.startswith("texts:") and len(served.hits) == 5
    assert [h.score for h in served.hits] == sorted((h.score for h in served.hits), reverse=True)
    assert {h.id: round(h.score, 4) for h in served.hits} == {h.id: round(h.score, 4) for h in expected}
    assert all(h.fields["text"] for h in served.hits)

    by_text = client.retrieve(text="a non-steroidal anti-inflammatory drug", k=3)
    assert by_text.index_version.startswith("molecules:") and len(by_text.hits) == 3
    assert all(h.fields["smiles"] for h in by_text.hits)
    with pytest.raises(grpc.RpcError) as caught:
        client.retrieve(molecule=mol("C1CC"), k=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_retrieval_reloads_a_new_index_version(client, tiny_checkpoint, text_index, tmp_path):
    from molm3d_core.checkpoints import load_model
    from molm3d_core.retrieval import update_index

    before = client.retrieve(molecule=mol("CCO"), k=50)
    corpus = tmp_path / "more.jsonl"
    corpus.write_text(json.dumps({"id": "t-new", "text": "A new description added while serving."}) + "\n")
    model, info = load_model(tiny_checkpoint, device="cpu", dtype="float32", with_lm=False)
    update_index(text_index, model, info, texts=corpus)
    deadline = time.monotonic() + 30
    while True:
        after = client.retrieve(molecule=mol("CCO"), k=50)
        if after.index_version != before.index_version:
            break
        assert time.monotonic() < deadline, "the served index never moved to the new version"
        time.sleep(0.5)
    assert "t-new" in {h.id for h in after.hits} and "t-new" not in {h.id for h in before.hits}
    assert len(after.hits) == len(before.hits) + 1


def test_cli_remote_mode(served, tiny_checkpoint, tmp_path, monkeypatch):
    """`molm3d caption|ask|retrieve --remote` go through the gateway; a bad record is a row, not a crash.
    Records travel as given (the 3D SDF keeps its coordinates), and a remote row is the row a local run
    of the same checkpoint writes: same fields in the same order, same values but the request id (only
    a server knows it) and the model of an error row (a record the server refused reached no model)."""
    from molm3d_core.cli.main import main

    monkeypatch.setenv("MOLM3D_API_TOKEN", TOKEN)
    sdf = tmp_path / "aspirin.sdf"  # with 3D coordinates; one record, as the test stack's LM queue is short
    sdf.write_text((EXAMPLES / "molecules.sdf").read_text().split("$$$$")[0] + "$$$$\n")
    for task, options in (("caption", []), ("ask", ["-q", "What is the HOMO energy?"])):
        argv = [task, "CCO", "C1CC", str(sdf), *options, "--max-new-tokens", "4", "-o"]
        remote, local = tmp_path / f"{task}-remote.jsonl", tmp_path / f"{task}-local.jsonl"
        assert main([*argv, str(remote), "--remote", served.target]) == 1
        assert main([*argv, str(local), "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]) == 1
        remote_rows, local_rows = ([json.loads(line) for line in f.read_text().splitlines()] for f in (remote, local))
        assert [r["status"] for r in remote_rows] == ["ok", "error", "ok"]
        assert remote_rows[1]["error_code"] == "invalid_smiles" and remote_rows[1]["record_id"] == "arg2"
        assert (remote_rows[2]["record_id"], remote_rows[2]["smiles"]) == ("aspirin", ASPIRIN)
        assert (remote_rows[2]["conformer_method"], remote_rows[2]["source_format"]) == ("input_3d", "sdf")
        for r, l in zip(remote_rows, local_rows, strict=True):
            assert list(r) == list(l)
            ok = r["status"] == "ok"
            assert bool(r["request_id"]) == ok and l["request_id"] is None
            assert isinstance(l["model_trained"], bool)
            assert (r["model_id"], r["model_trained"]) == ((l["model_id"], l["model_trained"]) if ok else (None, None))
            unknown_here_or_there = ("request_id", "model_id", "model_trained")
            assert {k: v for k, v in r.items() if k not in unknown_here_or_there} == {
                k: v for k, v in l.items() if k not in unknown_here_or_there
            }
    assert main(["caption", "CCO", "--remote", served.target, "--xyz-charge", "1"]) == 2  # cannot travel
    hits = tmp_path / "hits.csv"
    assert (
        main(
            ["retrieve", "--remote", served.target, "--smiles", ASPIRIN, "-k", "3", "--format", "csv", "-o", str(hits)]
        )
        == 0
    )
    lines = hits.read_text().splitlines()
    assert lines[0].startswith("rank,id,score") and len(lines) == 4


# -- bad input -------------------------------------------------------------------------------------


BAD = [
    (mol("C1CC", id="ring"), "invalid_smiles"),
    (mol("C" * 61, id="big"), "too_many_atoms"),
    (mol("[Og]", id="og"), "unsupported_element"),
    (mol("garbage\n\n\nnot a molfile\nM  END\n$$$$\n", fmt="sdf", id="sdf"), "parse_error"),
    (mol("CCO", fmt="cml"), "unsupported_format"),
    (mol(""), "invalid_request"),
]


def test_bad_inputs_get_invalid_argument_while_good_requests_succeed(client):
    with ThreadPoolExecutor(4) as pool:
        good = pool.submit(client.caption, mol(ASPIRIN, id="good"), max_new_tokens=24)
        for bad, code in BAD:
            with pytest.raises(grpc.RpcError) as caught:
                client.caption(bad, max_new_tokens=4)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert error_detail(caught.value).code == code, caught.value.details()
        assert good.result().record_id == "good" and good.result().text is not None
    with pytest.raises(grpc.RpcError) as caught:
        client.ask(mol(ASPIRIN), "   ")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        client.caption(mol(ASPIRIN), max_new_tokens=100_000)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_new_tokens" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        client.caption(mol(ASPIRIN), no_repeat_ngram_size=-1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no_repeat_ngram" in caught.value.details()


BAD_DECODINGS = [
    {"repetition_penalty": -1.0},
    {"repetition_penalty": math.nan},
    {"repetition_penalty": math.inf},
    {"length_penalty": math.nan},
    {"num_beams": -1},
    {"max_new_tokens": -3},
    {"no_repeat_ngram_size": 17},
]


def test_a_bad_decoding_fails_only_its_own_request(client):
    # Sent beside a plain Ask and a Caption, as in issue #15: those two must still be answered.
    with ThreadPoolExecutor(4) as pool:
        for bad in BAD_DECODINGS:
            good = [pool.submit(client.ask, mol("CCO"), "What is its molecular weight?", max_new_tokens=4),
                    pool.submit(client.caption, mol(ASPIRIN), max_new_tokens=4)]  # fmt: skip
            for call in (client.ask, client.caption):
                args = (mol("CCO"), "What is its molecular weight?") if call == client.ask else (mol("CCO"),)
                with pytest.raises(grpc.RpcError) as caught:
                    call(*args, **bad)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, caught.value.details())
                assert f"decoding.{next(iter(bad))}" in caught.value.details()
            assert all(g.result().text is not None for g in good)


def test_unauthenticated_without_the_token(served, channel):
    stub = conformer_pb2_grpc.ConformerServiceStub(channel)
    for metadata in ([("application", "conformer")], [("application", "conformer"), ("authorization", "Bearer nope")]):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(mol("CCO"), metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status, body = http_json(f"{served.http}/v1/caption", {"molecule": {"text": "CCO"}}, token=None)
    assert status == 401 and body["error"]["status"] == "UNAUTHENTICATED"


def test_resource_exhausted_beyond_the_queue_limit(channel):
    lm = lm_pb2_grpc.LMServiceStub(channel)
    encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
    conformer = conformer_pb2_grpc.ConformerServiceStub(channel).Generate(mol("CCO"), metadata=meta("conformer"))
    tokens = encoder.Encode(encoder_pb2.EncodeRequest(conformer=conformer), metadata=meta("encoder")).molecule_tokens
    request = lm_pb2.GenerateRequest(
        instruction="Describe the input molecule.",
        molecules=[lm_pb2.PromptMolecule(smiles="CCO", molecule_tokens=tokens)],
        decoding=common_pb2.DecodingOptions(max_new_tokens=400, num_beams=5),
    )

    def call(_: int) -> grpc.StatusCode:
        try:
            lm.Generate(request, metadata=meta("lm"), timeout=300)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()

    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(call, range(12)))
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1, codes
    assert codes.count(grpc.StatusCode.OK) >= 2, codes  # the admitted ones complete
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes


def test_deadline_exceeded(client):
    request = gateway_pb2.CaptionRequest(
        molecule=mol("CCCCCCCCCCCCCCCO"), decoding=common_pb2.DecodingOptions(max_new_tokens=400)
    )
    with pytest.raises(grpc.RpcError) as caught:
        client.stub.Caption(request, metadata=[*client.metadata, ("molm3d-timeout-ms", "5")])
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- HTTP and health -------------------------------------------------------------------------------


def test_http_json_and_health(served, channel):
    status, body = http_json(f"{served.http}/v1/health/ready", token=None)
    assert status == 200 and all(body["stages"].values())
    status, body = http_json(
        f"{served.http}/v1/caption", {"molecule": {"text": ASPIRIN, "id": "a"}, "decoding": {"max_new_tokens": 5}}
    )
    assert status == 200 and body["record_id"] == "a" and body["smiles"] == ASPIRIN
    status, body = http_json(f"{served.http}/v1/ask", {"molecule": {"text": "C1CC"}, "question": "HOMO?"})
    assert status == 400 and body["error"]["code"] == "invalid_smiles"
    ask = {"molecule": {"text": "CCO"}, "question": "What is its molecular weight?"}
    for decoding in ({"repetition_penalty": -1}, {"repetition_penalty": "NaN"}):
        status, body = http_json(f"{served.http}/v1/ask", {**ask, "decoding": decoding})
        assert status == 400 and body["error"]["code"] == "invalid_request", body
        assert "decoding.repetition_penalty" in body["error"]["message"], body
    for raw in (b"42", b"null", b"true", b'"CCO"', b"[" * 100_000 + b"]" * 100_000, b"\xff", b"{"):
        status, body = http_json(f"{served.http}/v1/caption", raw)  # a JSON error, never a plain-text 500
        assert status == 400 and body["error"]["code"] == "invalid_request", (raw[:8], body)
        assert "bad JSON body" in body["error"]["message"] and "Traceback" not in body["error"]["message"]
    status, body = http_json(f"{served.http}/v1/caption", {"molecule": {"txt": "CCO"}})
    assert status == 400 and "bad JSON body" in body["error"]["message"]
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=meta("gateway"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_rpcs_a_stage_does_not_serve_are_unimplemented_without_internals(channel):
    from molm3d.v1 import gateway_pb2_grpc

    health, service = health_pb2_grpc.HealthStub(channel), gateway_pb2_grpc.Molm3DServiceStub(channel)
    caption = gateway_pb2.CaptionRequest(molecule=mol("CCO"))
    calls = [
        lambda: list(health.Watch(health_pb2.HealthCheckRequest(), metadata=meta("gateway"), timeout=30)),
        lambda: health.Check(health_pb2.HealthCheckRequest(), metadata=meta("conformer"), timeout=30),
        lambda: service.Caption(caption, metadata=meta("encoder"), timeout=30),
        lambda: list(service.CaptionStream(caption, metadata=meta("lm"), timeout=30)),
    ]
    internals = re.compile(r"Traceback|File \"|\.py|pid=|ip=|Available methods")
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        details = caught.value.details() or ""
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, details
        assert "does not serve" in details and not internals.search(details), details


def test_server_reflection_is_off(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ServerReflectionInfo(iter([request]), timeout=30))  # no token: it must not list our services
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED, caught.value.details()


def test_killing_a_replica_mid_traffic_does_not_hang_clients(served, client):
    import os
    import signal

    from molm3d_services.stack import process_tree

    def names(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            return ""

    # SIGKILL of a replica's process, as an OOM kill or a crash would do it
    replicas = [p for p in process_tree(served.proc.pid) if names(p).startswith("ray::ServeReplica:conformer")]
    assert len(replicas) >= 2, replicas

    def call(i: int) -> grpc.StatusCode:
        try:
            client.stub.Caption(
                gateway_pb2.CaptionRequest(
                    molecule=mol("C" * (1 + i % 20) + "O"), decoding=common_pb2.DecodingOptions(max_new_tokens=4)
                ),
                metadata=client.metadata,
                timeout=60,
            )
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()

    # A trickle, one call at a time: the test LM always has room for it, so nothing is refused for load.
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(call, i) for i in range(30)]
        time.sleep(0.5)
        os.kill(replicas[0], signal.SIGKILL)
        codes = [f.result(timeout=90) for f in futures]  # every call returns: no hang
    # a call that met the dying replica is tried once more on a live one; else it is UNAVAILABLE (retryable)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    assert codes.count(grpc.StatusCode.OK) >= 25, codes
    assert client.caption(mol("CCN"), max_new_tokens=4).smiles == "CCN"  # and the stack still serves


@pytest.mark.stops_stack
def test_sigterm_stops_the_stack_and_leaves_no_processes(served):
    code, left = served.stop()
    assert code == 0, served.log_path.read_text()[-3000:]
    assert not left, f"processes left behind: {sorted(left)}"

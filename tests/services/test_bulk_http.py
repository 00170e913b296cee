"""Bulk jobs over the gateway's HTTP port (services/gateway/bulk_api.py), against the real Kafka-backed
stack of test_bulk.py (`bulk_stack`, `broker` in conftest.py) and the shared stack without Kafka
(`served`): submit a file, follow it to the end, download its results as `molm3d bulk fetch` writes
them; and the errors of each route."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request

import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from .conftest import TOKEN
from .test_bulk import bulk, qm9_smiles

INVALID = {4: "C1CC(", 13: "c1ccccc"}  # index -> an invalid SMILES (unclosed ring, unclosed aromatic ring)


def call(base: str, method: str, path: str, body: dict | bytes | None = None, token: str | None = TOKEN):
    """(status, headers, body bytes) of one HTTP call; errors are answers too."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if token:
        request.add_header("authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def error_of(status: int, raw: bytes) -> tuple[int, str, str]:
    error = json.loads(raw)["error"]
    return status, error["code"], error["message"]


def wait_complete(base: str, job_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        status, _, raw = call(base, "GET", f"/v1/bulk/jobs/{job_id}")
        assert status == 200, raw
        state = json.loads(raw)
        seen.append(state["done"] + state["failed"])
        if state["complete"]:
            assert seen == sorted(seen)  # progress never goes back
            return state
        time.sleep(1)
    raise TimeoutError(f"{job_id} not complete after {timeout_s} s: {state}")


@pytest.fixture(scope="module")
def smiles_job(bulk_stack) -> tuple[str, list[str]]:
    """A 20-molecule caption job over HTTP, 2 of its SMILES invalid, followed to the end."""
    smiles = qm9_smiles(20, start=15000)
    for index, bad in INVALID.items():
        smiles[index] = bad
    text = "smiles name\n" + "".join(f"{s} mol{i}\n" for i, s in enumerate(smiles))
    body = {"filename": "mols.smi", "text": text, "task": "caption", "decoding": {"max_new_tokens": 8}}
    status, _, raw = call(bulk_stack.http, "POST", "/v1/bulk/jobs", body)
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["total"] == 20 and answer["job_id"].startswith("job-")
    return answer["job_id"], smiles


def test_an_http_job_runs_to_the_end_with_its_failures_listed(bulk_stack, smiles_job):
    job_id, _ = smiles_job
    state = wait_complete(bulk_stack.http, job_id)
    assert (state["total"], state["done"], state["failed"], state["pending"]) == (20, 18, 2, 0)
    assert (state["task"], state["source"]) == ("caption", "mols.smi")
    assert [(f["index"], f["record_id"], f["code"]) for f in state["failures"]] == [
        (4, "mol4", "invalid_smiles"),
        (13, "mol13", "invalid_smiles"),
    ]
    assert all(f["message"] for f in state["failures"])


def test_results_are_what_bulk_fetch_writes(bulk_stack, broker, smiles_job, tmp_path):
    job_id, smiles = smiles_job
    wait_complete(bulk_stack.http, job_id)
    status, headers, raw = call(bulk_stack.http, "GET", f"/v1/bulk/jobs/{job_id}/results?format=jsonl")
    assert status == 200, raw
    assert headers["content-disposition"] == f'attachment; filename="{job_id}.jsonl"'
    assert headers["x-molm3d-job-complete"] == "true"
    rows = [json.loads(line) for line in raw.decode().splitlines()]
    fetched = bulk(broker, "fetch", job_id, "-o", str(tmp_path / "out.jsonl"))
    assert fetched.returncode == 0, fetched.stderr
    expected = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == expected  # item for item, every field
    good = [i for i in range(20) if i not in INVALID]
    assert [r["index"] for r in rows] == good  # each answered item once, in input order
    assert [r["record_id"] for r in rows] == [f"mol{i}" for i in good]
    assert [r["smiles"] for r in rows] == [Chem.CanonSmiles(smiles[i]) for i in good]
    assert all(r["status"] == "ok" and r["caption"] and r["model_id"] == "molm3d-tiny-test" for r in rows)

    status, headers, raw = call(bulk_stack.http, "GET", f"/v1/bulk/jobs/{job_id}/results?format=csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert headers["content-disposition"] == f'attachment; filename="{job_id}.csv"'
    table = list(csv.DictReader(io.StringIO(raw.decode(), newline="")))
    assert [(int(r["index"]), r["caption"]) for r in table] == [(r["index"], r["caption"]) for r in rows]

    status, headers, raw = call(bulk_stack.http, "GET", f"/v1/bulk/jobs/{job_id}/results?format=sdf")
    assert status == 200 and headers["content-disposition"] == f'attachment; filename="{job_id}.sdf"'
    supplier = Chem.ForwardSDMolSupplier(io.BytesIO(raw))
    mols = [m for m in supplier]
    assert all(m is not None for m in mols)
    assert [m.GetProp("_Name") for m in mols] == [r["record_id"] for r in rows]
    assert [m.GetProp("caption") for m in mols] == [" ".join(r["caption"].split()) for r in rows]


def test_an_sdf_upload_keeps_its_titles_and_3d_coordinates(bulk_stack):
    names = {"ethanol": "CCO", "benzene": "c1ccccc1", "acetic_acid": "CC(=O)O"}
    blocks = []
    for name, smi in names.items():
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=7)
        mol.SetProp("_Name", name)
        blocks.append(Chem.MolToMolBlock(mol) + "$$$$\n")
    body = {"filename": "three.sdf", "text": "".join(blocks), "task": "embed"}
    status, _, raw = call(bulk_stack.http, "POST", "/v1/bulk/jobs", body)
    assert status == 200, raw
    job_id = json.loads(raw)["job_id"]
    assert json.loads(raw)["total"] == 3
    state = wait_complete(bulk_stack.http, job_id)
    assert (state["done"], state["failed"], state["failures"]) == (3, 0, [])
    status, _, raw = call(bulk_stack.http, "GET", f"/v1/bulk/jobs/{job_id}/results?format=jsonl")
    rows = [json.loads(line) for line in raw.decode().splitlines()]
    assert [r["record_id"] for r in rows] == list(names)
    assert [r["smiles"] for r in rows] == [Chem.CanonSmiles(s) for s in names.values()]
    assert all(r["conformer_method"] == "input_3d" and r["embedding_shape"][0] > 0 for r in rows)


def test_bad_requests_get_typed_errors(bulk_stack):
    base, post = bulk_stack.http, "/v1/bulk/jobs"
    ok = {"filename": "a.smi", "text": "CCO ethanol\n", "task": "embed"}
    unknown = f"job-{time.time_ns()}"
    cases = [
        (call(base, "GET", f"/v1/bulk/jobs/{unknown}"), 404, "not_found"),
        (call(base, "GET", f"/v1/bulk/jobs/{unknown}/results?format=csv"), 404, "not_found"),
        (call(base, "POST", post, {**ok, "task": "translate"}), 400, "invalid_request"),
        (call(base, "POST", post, {**ok, "task": "ask"}), 400, "invalid_request"),  # no question
        (call(base, "POST", post, {**ok, "text": ""}), 400, "empty_input"),
        (call(base, "POST", post, {**ok, "text": "\n# only a comment\n"}), 400, "empty_input"),
        (call(base, "POST", post, {**ok, "format": "pdf"}), 400, "unsupported_format"),
        (call(base, "POST", post, {**ok, "filename": "a.docx"}), 400, "unsupported_format"),
        (call(base, "POST", post, {**ok, "filename": ""}), 400, "invalid_request"),  # no way to tell the format
        (call(base, "POST", post, {**ok, "colour": "red"}), 400, "invalid_request"),
        (call(base, "POST", post, {**ok, "text": 5}), 400, "invalid_request"),
        (call(base, "POST", post, {**ok, "task": "caption", "decoding": {"num_beams": -3}}), 400, "invalid_request"),
        (call(base, "POST", post, b"[1, 2]"), 400, "invalid_request"),
        (call(base, "POST", post, b"{not json"), 400, "invalid_request"),
        (call(base, "POST", post, {**ok, "text": "C\n" * 1_000_001}), 413, "too_many_molecules"),
        (call(base, "GET", "/v1/bulk/jobs/a%20b"), 400, "invalid_request"),  # not a job id
        (call(base, "GET", "/v1/bulk/jobs/x/results?format=xlsx"), 400, "invalid_request"),
        (call(base, "GET", post), 405, "method_not_allowed"),
        (call(base, "POST", "/v1/bulk/jobs/x", ok), 405, "method_not_allowed"),
        (call(base, "GET", "/v1/bulk/jobs/x/files"), 404, "not_found"),
    ]
    for (status, _, raw), want_status, want_code in cases:
        got = error_of(status, raw)
        assert got[:2] == (want_status, want_code), got
        assert "Traceback" not in got[2] and "127.0.0.1" not in got[2] and "/tmp" not in got[2], got
    for method, path, body in (("POST", post, ok), ("GET", f"/v1/bulk/jobs/{unknown}", None)):
        status, _, raw = call(base, method, path, body, token=None)
        assert error_of(status, raw)[:2] == (401, "unauthenticated")
        status, _, raw = call(base, method, path, body, token="wrong")
        assert error_of(status, raw)[:2] == (401, "unauthenticated")


def test_a_csv_upload_is_read_as_smiles_and_id_columns(bulk_stack):
    text = "smiles,name\nCCO,ethanol\nc1ccccc1,benzene\n"
    body = {"filename": "two.csv", "text": text, "task": "embed"}
    status, _, raw = call(bulk_stack.http, "POST", "/v1/bulk/jobs", body)
    assert status == 200, raw
    job_id = json.loads(raw)["job_id"]
    wait_complete(bulk_stack.http, job_id)
    status, _, raw = call(bulk_stack.http, "GET", f"/v1/bulk/jobs/{job_id}/results?format=jsonl")
    assert [json.loads(line)["record_id"] for line in raw.decode().splitlines()] == ["ethanol", "benzene"]


def test_a_stack_without_kafka_says_so(served):
    message = "this stack runs without Kafka (molm3d serve --kafka HOST:PORT)"
    ok = {"filename": "a.smi", "text": "CCO\n", "task": "embed"}
    for method, path, body in (
        ("POST", "/v1/bulk/jobs", ok),
        ("GET", "/v1/bulk/jobs/job-123", None),
        ("GET", "/v1/bulk/jobs/job-123/results?format=jsonl", None),
    ):
        status, _, raw = call(served.http, method, path, body)
        assert error_of(status, raw) == (503, "bulk_unavailable", message)
        status, _, raw = call(served.http, method, path, body, token=None)  # the token comes first
        assert error_of(status, raw)[:2] == (401, "unauthenticated")


# -- without a stack ------------------------------------------------------------------------------------------


def test_molm3d_serve_kafka_gives_the_gateway_the_bulk_workers_broker(monkeypatch):
    from molm3d_services import stack
    from molm3d_services.bulk.deployment import BulkSettings
    from molm3d_services.common.settings import SettingsError
    from molm3d_services.gateway.deployment import GatewaySettings

    monkeypatch.delenv("MOLM3D_KAFKA_BOOTSTRAP", raising=False)

    def user_configs(config: dict) -> dict[str, dict]:
        return {d["name"]: d.get("user_config", {}) for a in config["applications"] for d in a["deployments"]}

    without = user_configs(stack.override(stack.load_config()))
    assert "Gateway" in without and "BulkWorker" not in without  # the gateway stays, bulk off
    assert GatewaySettings.from_user_config(without["Gateway"]).kafka_settings().bootstrap == ""
    configs = user_configs(stack.override(stack.load_config(), kafka="127.0.0.1:9092"))
    gateway = GatewaySettings.from_user_config(configs["Gateway"]).kafka_settings()
    assert gateway.bootstrap == "127.0.0.1:9092"
    assert gateway == BulkSettings.from_user_config(configs["BulkWorker"]).kafka_settings()
    monkeypatch.setenv("MOLM3D_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("MOLM3D_KAFKA_RESULTS_TOPIC", "other.results")
    gateway = GatewaySettings.from_user_config({}).kafka_settings()
    assert (gateway.bootstrap, gateway.results_topic) == ("kafka:9092", "other.results")
    with pytest.raises(SettingsError, match="GatewaySettings: unknown Kafka setting 'bootstrap_servers'"):
        GatewaySettings.from_user_config({"kafka": {"bootstrap_servers": "x"}})


def test_the_body_limit_holds_with_and_without_a_content_length():
    import asyncio

    from starlette.requests import Request

    from molm3d_services.gateway.bulk_api import BulkError, read_body

    def request(chunks: list[bytes], length: int | None) -> Request:
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        headers = [(b"content-length", str(length).encode())] if length is not None else []

        async def receive() -> dict:
            return messages.pop(0)

        return Request({"type": "http", "method": "POST", "headers": headers}, receive)

    async def body(chunks: list[bytes], length: int | None) -> bytes | int:
        try:
            return await read_body(request(chunks, length), limit=10)
        except BulkError as err:
            return err.http

    run = asyncio.run
    assert run(body([b"12345", b"67890"], 10)) == b"1234567890"
    assert run(body([b"12345", b"67890"], None)) == b"1234567890"
    assert run(body([b"x"], 11)) == 413  # refused by its declared length, before reading
    assert run(body([b"123456", b"78901"], None)) == 413  # no length: refused while it arrives

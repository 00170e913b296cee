"""Bulk jobs over Kafka, end to end: the real local broker (Tansu on rclone S3, started here), the real
stack with bulk workers (`molm3d serve --kafka`), the real CLI (`molm3d bulk ...`) and kafka-python.

Crash tests kill the real processes (a worker replica, the broker) mid-job and check that `bulk fetch`
still returns every item exactly once. `broker` and `bulk_stack` are session fixtures (conftest.py),
shared with test_bulk_http.py and test_console_ui.py."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rdkit import Chem

from tests.broker import Broker

from .conftest import free_port


def qm9_smiles(n: int, start: int = 1000) -> list[str]:
    from molm3d_core.data.qm9 import qm9_data_dir

    with open(qm9_data_dir() / "qm9_part1.csv") as f:
        rows = list(csv.DictReader(f))
    return [row["SMILES"] for row in rows[start : start + n]]


def bulk(broker: Broker, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOLM3D_KAFKA_BOOTSTRAP": broker.bootstrap}
    return subprocess.run(
        [sys.executable, "-m", "molm3d_core.cli.main", "bulk", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def submit(broker: Broker, tmp: Path, smiles: list[str], task: str, *options: str) -> str:
    path = tmp / "job.smi"
    path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(smiles)))
    done = bulk(broker, "submit", str(path), "--task", task, *options)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def wait_done(broker: Broker, job: str, timeout: float = 600) -> None:
    done = bulk(broker, "status", job, "--wait", "--timeout", str(timeout), timeout=timeout + 60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 pending" in done.stdout


def fetch(broker: Broker, job: str, out: Path) -> tuple[list[dict], list[dict]]:
    done = bulk(broker, "fetch", job, "-o", str(out))
    assert done.returncode == 0, done.stderr
    failures = out.with_suffix(".failures.jsonl")
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    return read(out), read(failures)


def progress(broker: Broker, job: str) -> tuple[int, set[str]]:
    """(answered items so far, worker names that answered them), read like `bulk fetch` does."""
    from molm3d_services.bulk.config import KafkaSettings
    from molm3d_services.bulk.jobs import JobReader

    reader = JobReader(KafkaSettings(bootstrap=broker.bootstrap), job)
    try:
        state = reader.update()
    finally:
        reader.close()
    return state.done, {r.worker for r in state.results.values()}


def wait_progress(broker: Broker, job: str, at_least: int, timeout: float = 300) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, workers = progress(broker, job)
        if done >= at_least:
            return workers
        time.sleep(0.5)
    raise TimeoutError(f"{job}: fewer than {at_least} results after {timeout} s")


def assert_exactly_once(rows: list[dict], smiles: list[str]) -> None:
    assert [r["index"] for r in rows] == list(range(len(smiles)))  # each item once, in input order
    assert [r["record_id"] for r in rows] == [f"mol{i}" for i in range(len(smiles))]
    assert [r["smiles"] for r in rows] == [Chem.CanonSmiles(s) for s in smiles]


def test_job_completes_with_every_result_once(bulk_stack, broker, tmp_path):
    smiles = qm9_smiles(240)
    job = submit(broker, tmp_path, smiles, "caption", "--max-new-tokens", "8")
    wait_done(broker, job)
    rows, failures = fetch(broker, job, tmp_path / "out.jsonl")
    assert failures == []
    assert_exactly_once(rows, smiles)
    assert all(r["status"] == "ok" and r["caption"] and r["model_id"] == "molm3d-tiny-test" for r in rows)
    # Same answers as the gateway gives one molecule at a time (greedy decoding is deterministic).
    from molm3d.v1 import common_pb2

    from molm3d_services.client import GatewayClient

    from .conftest import TOKEN

    client = GatewayClient(bulk_stack.target, token=TOKEN)
    for row in rows[:3]:
        answer = client.caption(common_pb2.MoleculeInput(text=row["smiles"]), max_new_tokens=8)
        assert answer.text == row["caption"]
    client.close()
    # The other output formats carry the same rows.
    assert bulk(broker, "fetch", job, "-o", str(tmp_path / "out.csv")).returncode == 0
    with open(tmp_path / "out.csv", newline="") as f:
        assert [r["caption"] for r in csv.DictReader(f)] == [r["caption"] for r in rows]
    assert bulk(broker, "fetch", job, "-o", str(tmp_path / "out.sdf")).returncode == 0
    sdf = [m for m in Chem.SDMolSupplier(str(tmp_path / "out.sdf"))]
    assert [m.GetProp("caption") for m in sdf] == [" ".join(r["caption"].split()) for r in rows]  # one line each


def test_worker_killed_mid_job_loses_and_duplicates_nothing(bulk_stack, broker, tmp_path):
    smiles = qm9_smiles(300, start=3000)
    job = submit(broker, tmp_path, smiles, "caption", "--max-new-tokens", "24")
    workers = wait_progress(broker, job, at_least=16)
    (victim,) = workers
    pid = int(victim.rsplit(":", 1)[1])
    done_at_kill, _ = progress(broker, job)
    os.kill(pid, signal.SIGKILL)  # the BulkWorker replica: Serve starts a new one
    assert done_at_kill < len(smiles), "the job finished before the worker could be killed"
    wait_done(broker, job)
    rows, failures = fetch(broker, job, tmp_path / "out.jsonl")
    assert failures == []
    assert_exactly_once(rows, smiles)
    assert len({r["worker"] for r in rows}) >= 2  # finished by the replacement replica


def test_broker_killed_and_restarted_mid_job(bulk_stack, broker, tmp_path):
    smiles = qm9_smiles(300, start=6000)
    job = submit(broker, tmp_path, smiles, "embed")
    wait_progress(broker, job, at_least=8)
    broker.kill()
    time.sleep(3)
    broker.up()  # same folder: the log, offsets and group state come back from S3
    wait_done(broker, job)
    rows, failures = fetch(broker, job, tmp_path / "out.jsonl")
    assert failures == []
    assert_exactly_once(rows, smiles)
    assert all(r["embedding_shape"][0] > 0 and len(r["embedding"]) == r["embedding_shape"][0] for r in rows)
    assert all(r["model_id"] == "molm3d-tiny-test" and r["model_trained"] is True for r in rows)  # the server says


def test_bad_items_go_to_the_dlq_and_the_rest_is_answered(bulk_stack, broker, tmp_path):
    from kafka import KafkaProducer

    good = qm9_smiles(6, start=9000)
    smiles = [good[0], "C1CC(", good[1], "C" * 80, good[2], "[Xe]", *good[3:]]
    job = submit(broker, tmp_path, smiles, "embed")
    poison = [b"\x00\xff\x13 not protobuf", b'{"jobId": 5, "index": "x"']
    garbage_only = f"garbage-{time.time_ns()}"  # a "job" none of whose records decodes
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for payload in poison:
        producer.send("molm3d.jobs", key=job.encode(), value=payload)
        producer.send("molm3d.jobs", key=garbage_only.encode(), value=payload)
    producer.flush()
    producer.close()
    wait_done(broker, job)
    rows, failures = fetch(broker, job, tmp_path / "out.jsonl")
    assert [r["index"] for r in rows] == [0, 2, 4, 6, 7, 8]
    assert [r["smiles"] for r in rows] == [Chem.CanonSmiles(s) for s in good]
    by_index = {f["index"]: f for f in failures if f["index"] is not None}
    assert sorted(by_index) == [1, 3, 5]
    assert by_index[1]["error_code"] == "invalid_smiles"
    assert by_index[3]["error_code"] == "too_many_atoms"
    assert by_index[5]["error_code"] == "unsupported_element"
    assert all(f["error_status"] == "INVALID_ARGUMENT" and f["error_message"] for f in by_index.values())
    raw = sorted(bytes.fromhex(f["payload_hex"]) for f in failures if f["index"] is None)
    assert raw == sorted(poison)  # undecodable records kept whole for inspection
    status = bulk(broker, "status", job)
    assert "6 done, 3 failed, 0 pending of 9; 2 undecodable records" in status.stdout
    deadline = time.monotonic() + 120  # its records may sit in another partition, behind other work
    while "2 undecodable" not in (status := bulk(broker, "status", garbage_only)).stdout:
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(2)
    # listed, not "no record of this job"
    assert status.returncode == 0 and "size unknown (no decodable item); 2 undecodable records" in status.stdout
    fetched = bulk(broker, "fetch", garbage_only, "-o", str(tmp_path / "garbage.jsonl"))
    assert fetched.returncode == 1 and "0 results" in fetched.stderr and "2 failures" in fetched.stderr
    assert bulk(broker, "status", f"no-such-job-{time.time_ns()}").returncode == 1


def test_hand_made_json_job_is_processed(bulk_stack, broker, tmp_path):
    from kafka import KafkaProducer

    job = f"hand-made-{time.time_ns()}"
    items = [
        {"jobId": job, "index": i, "total": 2, "task": "ask", "question": "What is its molecular weight?",
         "molecule": {"id": name, "text": smi}, "decoding": {"maxNewTokens": 6}}
        for i, (name, smi) in enumerate([("ethanol", "CCO"), ("benzene", "c1ccccc1")])
    ]  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for item in items:
        headers = [("content-type", b"application/json")]
        producer.send("molm3d.jobs", key=job.encode(), value=json.dumps(item).encode(), headers=headers)
    producer.flush()
    producer.close()
    wait_done(broker, job)
    rows, failures = fetch(broker, job, tmp_path / "out.jsonl")
    assert failures == []
    assert [(r["index"], r["record_id"], r["task"]) for r in rows] == [(0, "ethanol", "ask"), (1, "benzene", "ask")]
    assert all(r["answer"] is not None for r in rows)


def test_standalone_worker_answers_through_the_gateway(bulk_stack, broker, tmp_path):
    """`molm3d bulk worker --gateway` (the k8s Deployment form): its own topics and group here, so only
    it can answer; SIGTERM stops it cleanly."""
    from .conftest import TOKEN

    topics = {
        "MOLM3D_KAFKA_JOBS_TOPIC": "standalone.jobs",
        "MOLM3D_KAFKA_RESULTS_TOPIC": "standalone.results",
        "MOLM3D_KAFKA_DLQ_TOPIC": "standalone.dlq",
        "MOLM3D_KAFKA_GROUP": "standalone-workers",
        "MOLM3D_KAFKA_SESSION_TIMEOUT_MS": "6000",
    }
    health = free_port()
    env = {**os.environ, **topics, "MOLM3D_KAFKA_BOOTSTRAP": broker.bootstrap, "MOLM3D_API_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "molm3d_core.cli.main", "bulk", "worker", "--gateway", bulk_stack.target]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([*cmd, "--health-port", str(health)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        smiles = qm9_smiles(20, start=12000)
        path = tmp_path / "job.smi"
        path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(smiles)))
        sub_env = {**os.environ, **topics, "MOLM3D_KAFKA_BOOTSTRAP": broker.bootstrap}
        run = lambda *a: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "molm3d_core.cli.main", "bulk", *a], capture_output=True, text=True, env=sub_env
        )
        submitted = run("submit", str(path), "--task", "embed")
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.split()[-1]
        waited = run("status", job, "--wait", "--timeout", "300")
        assert waited.returncode == 0, waited.stderr + (tmp_path / "worker.log").read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/metrics", timeout=5) as r:
            assert 'molm3d_bulk_items_total{outcome="ok"} 20.0' in r.read().decode()
        fetched = run("fetch", job, "-o", str(tmp_path / "out.jsonl"))
        assert fetched.returncode == 0, fetched.stderr
        rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert_exactly_once(rows, smiles)
        assert {r["worker"].rsplit(":", 1)[1] for r in rows} == {str(worker.pid)}
    finally:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            assert worker.wait(30) == 0
        if worker.poll() is None:
            worker.kill()
        log.close()

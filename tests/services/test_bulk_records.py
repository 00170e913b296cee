"""Bulk records and bookkeeping without a broker: decoding (protobuf, JSON, garbage), settings from the
environment, which applications run, and the one-outcome-per-item rule of the job readers."""

from __future__ import annotations

import json

import pytest
from molm3d.v1 import bulk_pb2, common_pb2

from molm3d_services.bulk import messages
from molm3d_services.bulk.config import KafkaSettings
from molm3d_services.bulk.jobs import JobState, failure_rows


def _item(**fields) -> bulk_pb2.BulkItem:
    base = {"job_id": "j", "index": 0, "total": 2, "task": "caption", "molecule": common_pb2.MoleculeInput(text="CCO")}
    return bulk_pb2.BulkItem(**{**base, **fields})


def test_protobuf_and_json_forms_decode_to_the_same_item():
    item = _item(task="ask", question="What is its LogP?", index=1)
    json_form = json.dumps(
        {
            "jobId": "j",
            "index": 1,
            "total": 2,
            "task": "ask",
            "question": "What is its LogP?",
            "molecule": {"text": "CCO"},
        }
    ).encode()
    assert messages.decode_item(item.SerializeToString(), [], b"j") == item
    assert messages.decode_item(json_form, [messages.JSON_HEADER], b"j") == item
    assert messages.decode_item(json_form, None, b"j") == item  # recognised by its leading "{" too


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        (b"\x00\xff\x13 junk", "undecodable", "not a BulkItem (protobuf)"),
        (b'{"jobId": 5', "undecodable", "not a BulkItem (JSON)"),
        (None, "undecodable", "empty record"),
        (b"x" * (messages.MAX_ITEM_BYTES + 1), "item_too_large", "limit is"),
    ],
)
def test_bad_payloads_are_reported_with_the_job_from_the_key(raw, code, reason):
    bad = messages.decode_item(raw, [], b"job-7")
    assert isinstance(bad, messages.BadItem)
    assert (bad.code, bad.item.job_id, bad.item.index) == (code, "job-7", -1)
    assert reason in bad.message


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"job_id": ""}, "job_id is empty"),
        ({"index": 2}, "outside 0..1"),
        ({"task": "translate"}, "task 'translate'"),
        ({"task": "ask"}, "needs a question"),
        ({"molecule": common_pb2.MoleculeInput()}, "molecule.text is empty"),
    ],
)
def test_invalid_items_are_rejected_with_the_reason(fields, reason):
    bad = messages.decode_item(_item(**fields).SerializeToString(), [], b"j")
    assert isinstance(bad, messages.BadItem) and bad.code == "invalid_request"
    assert reason in bad.message


def test_dead_letter_keeps_the_reason_and_the_payload():
    letter = bulk_pb2.DeadLetter.FromString(
        messages.dead_letter(_item(index=1), "invalid_smiles", "bad", "INVALID_ARGUMENT", b"raw")
    )
    assert (letter.job_id, letter.index, letter.error.code, letter.status, letter.payload) == (
        "j",
        1,
        "invalid_smiles",
        "INVALID_ARGUMENT",
        b"raw",
    )
    assert letter.worker and letter.finished_at


def test_kafka_settings_from_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("MOLM3D_KAFKA_BOOTSTRAP", "a:1,b:2")
    monkeypatch.setenv("MOLM3D_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MOLM3D_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MOLM3D_KAFKA_USERNAME", "worker")
    monkeypatch.setenv("MOLM3D_KAFKA_PASSWORD", "s3cret")
    monkeypatch.setenv("MOLM3D_KAFKA_PARTITIONS", "12")
    settings = KafkaSettings.from_env(jobs_topic="x.jobs", group="")  # empty overrides do not override
    assert settings.partitions == 12 and settings.jobs_topic == "x.jobs" and settings.group == "molm3d-bulk"
    options = settings.client_options()
    assert options["bootstrap_servers"] == ["a:1", "b:2"]
    assert (options["sasl_mechanism"], options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "worker",
        "s3cret",
    )
    assert settings.public()["password"] == "***"
    with pytest.raises(ValueError, match="unknown Kafka setting 'bootstrap_servers'; allowed: bootstrap, "):
        KafkaSettings.from_env(bootstrap_servers="x")
    monkeypatch.delenv("MOLM3D_KAFKA_BOOTSTRAP")
    with pytest.raises(ValueError, match="no Kafka broker configured"):
        KafkaSettings.from_env().client_options()


def test_bulk_workers_run_only_when_a_broker_is_configured(monkeypatch):
    from molm3d_services import stack

    monkeypatch.delenv("MOLM3D_KAFKA_BOOTSTRAP", raising=False)
    names = lambda config: [a["name"] for a in config["applications"]]  # noqa: E731
    assert "bulk" not in names(stack.override(stack.load_config()))
    with_kafka = stack.override(stack.load_config(), kafka="127.0.0.1:9092")
    assert "bulk" in names(with_kafka)
    (bulk,) = [a for a in with_kafka["applications"] if a["name"] == "bulk"]
    assert bulk["deployments"][0]["user_config"]["kafka"]["bootstrap"] == "127.0.0.1:9092"
    monkeypatch.setenv("MOLM3D_KAFKA_BOOTSTRAP", "kafka:9092")
    assert "bulk" in names(stack.override(stack.load_config()))


def test_job_state_keeps_one_outcome_per_item():
    state = JobState("j", info=bulk_pb2.JobInfo(job_id="j", total=3))
    result = lambda i: bulk_pb2.ItemResult(job_id="j", index=i, total=3)  # noqa: E731
    letter = lambda i: bulk_pb2.DeadLetter(job_id="j", index=i, total=3)  # noqa: E731
    state.add_result(result(0))
    state.add_result(result(0))  # redelivered after a crash
    state.add_failure(letter(1))
    state.add_failure(letter(1))
    state.add_failure(letter(-1))  # undecodable record: not an item of the job
    assert (state.done, state.failed, state.pending, state.duplicates, len(state.poison)) == (1, 1, 1, 2, 1)
    assert not state.complete
    state.add_result(result(1))  # a retried item that succeeded later counts as done, not failed
    state.add_result(result(2))
    assert (state.done, state.failed, state.pending, state.complete) == (3, 0, 0, True)


def test_a_job_of_undecodable_records_only_is_known_and_listed():
    state = JobState("garbage")
    assert not state.known
    state.add_failure(bulk_pb2.DeadLetter(job_id="garbage", index=-1, payload=b"\x00junk"))
    assert state.known and state.total is None and not state.complete
    assert state.summary() == "garbage: 0 done, 0 failed, size unknown (no decodable item); 1 undecodable records"
    assert [r["payload_hex"] for r in failure_rows(state)] == [b"\x00junk".hex()]


def test_job_without_job_info_takes_its_total_from_the_items():
    state = JobState("hand-made")
    assert state.total is None and not state.known
    state.add_result(bulk_pb2.ItemResult(job_id="hand-made", index=0, total=2))
    assert (state.total, state.pending) == (2, 1)


def test_submit_refuses_oversized_jobs_and_bad_options_before_touching_kafka(tmp_path):
    """Clear errors (exit 2) without a broker: the checks run before any connection."""
    import subprocess
    import sys

    path = tmp_path / "three.smi"
    path.write_text("CCO a\nCCN b\nCCC c\n")
    base = [sys.executable, "-m", "molm3d_core.cli.main", "bulk", "submit", str(path), "--kafka", "127.0.0.1:9"]
    cases = [
        (["--task", "embed", "--max-items", "2"], "the job has 3 molecules; the limit is 2"),
        (["--task", "ask"], "task ask needs --question"),
    ]
    for extra, message in cases:
        done = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr


def test_submit_records_refuses_empty_oversized_and_bad_jobs_with_their_codes_before_touching_kafka():
    """What the gateway's POST /v1/bulk/jobs maps to 400 / 413: no broker listens at port 9, and none
    is needed to refuse these."""
    from molm3d_core.chem.inputs import split_text
    from molm3d_services.bulk import jobs

    settings = KafkaSettings(bootstrap="127.0.0.1:9")
    cases = [
        ("# only a comment\n\n", "embed", {}, jobs.EMPTY_INPUT, "no molecules in a.smi"),
        ("C\n" * 5, "embed", {"max_items": 3}, jobs.TOO_MANY_MOLECULES, "the job has 5 molecules; the limit is 3"),
        ("CCO\n", "translate", {}, jobs.INVALID_REQUEST, "task must be one of"),
        ("CCO\n", "ask", {"question": " "}, jobs.INVALID_REQUEST, "task ask needs"),
    ]
    for text, task, options, code, message in cases:
        with pytest.raises(jobs.JobError, match=message) as caught:
            jobs.submit_records(settings, split_text(text, "smiles", "a.smi"), task, source="a.smi", **options)
        assert caught.value.code == code
    assert issubclass(jobs.TopicMissing, jobs.JobError)  # the CLI shows it as any job error

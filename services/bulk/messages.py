"""Records on the bulk topics (schema: protos/molm3d/v1/bulk.proto): encoding, and decoding that never
raises for a bad payload (an undecodable record becomes a dead letter, not a crash)."""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from molm3d.v1 import bulk_pb2, common_pb2

TASKS = ("caption", "ask", "embed")
JSON_HEADER = ("content-type", b"application/json")
MAX_ITEM_BYTES = 1_000_000  # one molecule's text; a bigger record goes to the DLQ unread


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def key(job_id: str) -> bytes:
    return job_id.encode("utf-8")


@dataclass
class BadItem:
    """A jobs-topic record that cannot be processed: why, and whatever could be read of it."""

    code: str
    message: str
    item: bulk_pb2.BulkItem


def decode_item(raw: bytes | None, headers: list[tuple[str, bytes]] | None, record_key: bytes | None):
    """BulkItem, or BadItem with the reason (binary protobuf, or its JSON form by header or leading "{")."""
    fallback = bulk_pb2.BulkItem(job_id=_text(record_key), index=-1)
    if raw is None:
        return BadItem("undecodable", "empty record", fallback)
    if len(raw) > MAX_ITEM_BYTES:
        return BadItem("item_too_large", f"record is {len(raw)} bytes; the limit is {MAX_ITEM_BYTES}", fallback)
    is_json = JSON_HEADER in (headers or []) or raw[:1] == b"{"
    try:
        item = (
            json_format.Parse(raw.decode("utf-8"), bulk_pb2.BulkItem())
            if is_json
            else bulk_pb2.BulkItem.FromString(raw)
        )
    except (DecodeError, json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        kind = "JSON" if is_json else "protobuf"
        return BadItem("undecodable", f"not a BulkItem ({kind}): {exc}", fallback)
    problem = validate_item(item)
    if problem:
        return BadItem("invalid_request", problem, item)
    return item


def validate_item(item: bulk_pb2.BulkItem) -> str | None:
    if not item.job_id:
        return "job_id is empty"
    if item.index < 0 or (item.total and item.index >= item.total):
        return f"index {item.index} is outside 0..{item.total - 1}"
    if item.task not in TASKS:
        return f"task {item.task!r} is not one of {TASKS}"
    if item.task == "ask" and not item.question.strip():
        return "task ask needs a question"
    if not item.molecule.text:
        return "molecule.text is empty"
    return None


def dead_letter(item: bulk_pb2.BulkItem, code: str, message: str, status: str, payload: bytes = b"") -> bytes:
    letter = bulk_pb2.DeadLetter(
        job_id=item.job_id,
        index=item.index,
        total=item.total,
        task=item.task,
        error=common_pb2.ErrorDetail(code=code, message=message, record_id=item.molecule.id, stage="bulk"),
        status=status,
        molecule=item.molecule,
        payload=payload,
        worker=worker_name(),
        finished_at=now(),
    )
    return letter.SerializeToString()


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""

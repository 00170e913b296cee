"""Bulk jobs on the gateway's HTTP port (the web console's bulk page; services/README.md, "Bulk jobs over HTTP").

POST /v1/bulk/jobs  {"filename", "text", "format"?, "task", "question"?, "decoding"?} -> {"job_id", "total"}
GET  /v1/bulk/jobs/{id}  -> {"job_id", "total", "done", "failed", "pending", "complete", "task", "question",
                             "source", "submitted_at", "failures": [{"index", "record_id", "code", "message"}]}
GET  /v1/bulk/jobs/{id}/results?format=jsonl|csv|sdf  -> the results file, as `molm3d bulk fetch` writes it

The same code as `molm3d bulk submit | status | fetch` (services/bulk: jobs.py, outputs.py): the upload is
cut into records by the library's input readers and published with `submit_records` (the workers parse
each record, so a bad molecule becomes one of the job's failures, not a failed upload); a job is read
with a `JobReader`, kept per job for a while so that the page's polls read only what arrived since the
last one. kafka-python blocks: every Kafka call runs in a worker thread. The gateway's Kafka settings:
GatewaySettings.kafka (`molm3d serve --kafka` sets it with the bulk worker's). Without a broker every
route answers 503 `bulk_unavailable`. Route (404 / 405), then the token (401), then the broker, then the
body; errors in the gateway's HTTP error body (http.py `error_response`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import logging
import posixpath
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format
from molm3d.v1 import common_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from molm3d_core.chem.inputs import DEFAULT_LIMITS, FORMATS, detect_format, split_text
from molm3d_core.errors import ErrorCode, MoleculeError

from ..bulk import jobs, messages
from ..bulk.config import KafkaSettings
from ..bulk.outputs import MEDIA_TYPES, OUTPUT_FORMATS, rows_text
from ..common.auth import check_grpc
from ..common.decoding import resolve_decoding
from ..common.errors import ServiceError
from .http import HttpCallContext, error_response, no_route, wrong_method

if TYPE_CHECKING:
    from .deployment import GatewayStage

log = logging.getLogger("ray.serve")
T = TypeVar("T")

PREFIX = "/v1/bulk/jobs"
NO_KAFKA = "this stack runs without Kafka (molm3d serve --kafka HOST:PORT)"
MAX_BODY_BYTES = 64 * 1024 * 1024  # the JSON body; the file in it: InputLimits.max_input_bytes (50 MB)
MAX_FILENAME_CHARS = 255
MAX_FAILURES_LISTED = 1_000  # in a status answer; `failed` counts them all
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")  # what a job id may be in a URL and a filename
CSV_EXTENSIONS = (".csv",)  # read as SMILES: first column the SMILES, second the id
BODY_FIELDS = {"filename", "text", "format", "task", "question", "decoding"}
READERS_KEPT = 4  # jobs followed at once (each reader holds its job's results in memory)
READER_IDLE_S = 120.0  # a reader not asked for this long is closed
TOPIC_WAIT_S = 5.0  # a missing results / DLQ topic: 404 after this long, not the CLI's 30 s


class BulkError(Exception):
    """A request this module refuses: HTTP status, gRPC status name and molm3d error code."""

    def __init__(self, http: int, status: grpc.StatusCode, code: str, message: str) -> None:
        super().__init__(message)
        self.http, self.err = http, ServiceError.make(status, code, message, "gateway")


def _bad(message: str, code: str = "invalid_request", http: int = 400) -> BulkError:
    return BulkError(http, grpc.StatusCode.INVALID_ARGUMENT, code, message)


def _unavailable(message: str) -> BulkError:
    return BulkError(503, grpc.StatusCode.UNAVAILABLE, "bulk_unavailable", message)


def _not_found(message: str) -> BulkError:
    return BulkError(404, grpc.StatusCode.NOT_FOUND, "not_found", message)


# -- routing ------------------------------------------------------------------------------------------------


async def handle_bulk(gateway: GatewayStage, request: Request, path: str) -> Response:
    parts = path.removeprefix(PREFIX).split("/")[1:]  # "" -> [], "/ID" -> [ID], "/ID/results" -> [ID, "results"]
    if not parts:
        method, name = "POST", "BulkSubmit"
    elif len(parts) == 1 or (len(parts) == 2 and parts[1] == "results"):
        method, name = "GET", "BulkStatus" if len(parts) == 1 else "BulkResults"
    else:
        return no_route(request, path)
    if request.method != method:
        return wrong_method(method)
    with gateway.metrics.request(name):
        try:
            check_grpc(HttpCallContext(request.headers), gateway.token, gateway.stage)
            bulk = _bulk_jobs(gateway)
            if not parts:
                return await _submit(bulk, request)
            job_id = _job_id(parts[0])
            if len(parts) == 1:
                return await _status(bulk, job_id)
            return await _results(bulk, job_id, request.query_params.get("format", "jsonl"))
        except BulkError as exc:
            response = error_response(gateway._fail(exc.err, None))
            response.status_code = exc.http
            return response
        except Exception as exc:  # ServiceError (the token) as it is; anything else: INTERNAL, logged
            return error_response(gateway._fail(exc, None))


def _bulk_jobs(gateway: GatewayStage) -> BulkJobs:
    """The gateway's BulkJobs for its current Kafka settings (a reconfigure may change them)."""
    settings = gateway.settings.kafka_settings()
    if not settings.bootstrap:
        raise _unavailable(NO_KAFKA)
    current: BulkJobs | None = getattr(gateway, "_bulk_jobs", None)
    if current is None or current.settings != settings:
        if current is not None:
            current.close_all()
        current = gateway._bulk_jobs = BulkJobs(settings)
    return current


def _job_id(raw: str) -> str:
    if not JOB_ID.fullmatch(raw):
        raise _bad(f"not a job id: {raw[:80]!r} (letters, digits and . _ : -, at most 200)")
    return raw


def _kafka_trouble(exc: Exception) -> BulkError:
    """A broker error without its text (which names hosts): the error class tells enough."""
    log.warning("gateway bulk: Kafka error: %r", exc)
    return _unavailable(f"the Kafka broker did not answer ({type(exc).__name__}); retry later")


def _read_error(exc: Exception, job_id: str) -> Exception:
    if isinstance(exc, jobs.TopicMissing):
        return _not_found(f"no record of job {job_id}: the bulk topics do not exist yet")
    if isinstance(exc, jobs.JobError):  # update's own time limit
        message = f"reading job {job_id} took too long; retry"
        return BulkError(504, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded", message)
    return _maybe_kafka(exc)


# -- POST /v1/bulk/jobs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A checked submit body."""

    source: str  # the file's name: record ids of unnamed records are built from it ("mols.smi:3")
    fmt: str
    text: str
    task: str
    question: str
    decoding: common_pb2.DecodingOptions


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with 413 past `limit` bytes (by its Content-Length, else while it arrives)."""
    declared = request.headers.get("content-length", "")
    too_large = _bad(f"the request body is over {limit} bytes", "input_too_large", 413)
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def parse_upload(raw: bytes) -> Upload:
    """The submit body's fields, checked: 400 `invalid_request` (or the library's code) naming what is wrong."""
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise _bad(f"bad JSON body: {err}") from None
    if not isinstance(body, dict):
        raise _bad("bad JSON body: expected a JSON object")
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise _bad(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; allowed: "
                   f"{', '.join(sorted(BODY_FIELDS))}")  # fmt: skip
    for name in BODY_FIELDS - {"decoding"}:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(f"{name} must be a string")
    filename = posixpath.basename((body.get("filename") or "").replace("\\", "/")).strip()
    if len(filename) > MAX_FILENAME_CHARS:
        raise _bad(f"filename has {len(filename)} characters; the limit is {MAX_FILENAME_CHARS}")
    task, question = body.get("task") or "", (body.get("question") or "").strip()
    if task not in messages.TASKS:
        raise _bad(f"task must be one of {', '.join(messages.TASKS)}, got {task!r}")
    if task == "ask" and not question:
        raise _bad("task ask needs a question")
    text = body.get("text") or ""
    size = len(text.encode("utf-8"))
    if size > DEFAULT_LIMITS.max_input_bytes:
        raise _bad(f"the file is {size} bytes; the limit is {DEFAULT_LIMITS.max_input_bytes}", "input_too_large", 413)
    fmt = body.get("format") or ""
    if fmt and fmt not in FORMATS:
        raise _bad(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}", ErrorCode.UNSUPPORTED_FORMAT.value)
    if not fmt:
        if not filename:
            raise _bad("give a filename with its extension (.smi .sdf .mol .xyz .pdb .csv) or a format")
        if filename.lower().endswith(CSV_EXTENSIONS):
            fmt, text = "smiles", _csv_as_smiles(text)
        else:
            try:
                fmt = detect_format(filename)
            except MoleculeError as err:  # the library's list of extensions, and ours
                raise _bad(f"{err.message}, .csv (or give a format)", err.code.value) from None
    if not text.strip():
        raise _bad(f"{filename or 'the file'} is empty", "empty_input")
    decoding = common_pb2.DecodingOptions()
    if body.get("decoding") is not None:
        if not isinstance(body["decoding"], dict):
            raise _bad("decoding must be a JSON object")
        try:
            json_format.ParseDict(body["decoding"], decoding)
        except (json_format.ParseError, TypeError, ValueError) as err:
            raise _bad(f"bad decoding: {err}") from None
        if task in ("caption", "ask"):
            try:
                resolve_decoding(decoding, task)  # the worker's check, before any item is published
            except MoleculeError as err:
                raise _bad(err.message) from None
    return Upload(filename or "upload", fmt, text, task, question, decoding)


def _csv_as_smiles(text: str) -> str:
    """A CSV file as SMILES lines "SMILES ID": its first column the SMILES, its second the id."""
    rows = csv.reader(io.StringIO(text))
    return "\n".join(" ".join(cell.strip() for cell in row[:2] if cell.strip()) for row in rows)


def submit_upload(settings: KafkaSettings, upload: Upload) -> tuple[str, int]:
    """Publish the upload as a job (blocking): `bulk submit`'s path from the records on."""
    return jobs.submit_records(
        settings,
        split_text(upload.text, upload.fmt, upload.source),
        upload.task,
        source=upload.source,
        question=upload.question,
        decoding=upload.decoding,
    )


async def _submit(bulk: BulkJobs, request: Request) -> Response:
    upload = parse_upload(await read_body(request))
    try:
        job_id, total = await asyncio.to_thread(submit_upload, bulk.settings, upload)
    except jobs.JobError as err:
        raise _bad(str(err), err.code, 413 if err.code == jobs.TOO_MANY_MOLECULES else 400) from None
    except Exception as exc:
        raise _maybe_kafka(exc) from None
    log.info("gateway bulk: submitted %s (%d molecules, task %s)", job_id, total, upload.task)
    return JSONResponse({"job_id": job_id, "total": total})


def _maybe_kafka(exc: Exception) -> Exception:
    from kafka.errors import KafkaError

    return _kafka_trouble(exc) if isinstance(exc, KafkaError) else exc


# -- GET /v1/bulk/jobs/{id}[/results] -----------------------------------------------------------------------


@dataclass
class _Followed:
    reader: jobs.JobReader | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    used: float = field(default_factory=time.monotonic)


class BulkJobs:
    """The gateway's side of bulk jobs for one Kafka configuration: a JobReader per recently followed
    job (at most READERS_KEPT, each closed after READER_IDLE_S unused), read under a per-job lock."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.followed: OrderedDict[str, _Followed] = OrderedDict()

    async def read(self, job_id: str, view: Callable[[jobs.JobState], T]) -> T:
        """`view` of the job as its records on the topics tell it now (run in a thread, under the job's
        lock: the state changes only there); 404 for a job with no record."""
        self._evict(keep=job_id)
        while True:
            entry = self.followed.setdefault(job_id, _Followed())
            self.followed.move_to_end(job_id)
            async with entry.lock:
                if self.followed.get(job_id) is not entry:
                    continue  # dropped while this request waited for it: start over with a fresh one
                work = asyncio.ensure_future(asyncio.to_thread(self._read, entry, job_id, view))
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:  # the caller left; the thread runs on with the reader,
                    await asyncio.wait([work])  # which stays locked until it ends
                    if not work.cancelled():
                        work.exception()  # retrieved: whatever it was, nobody is waiting for it
                    raise
                except Exception as exc:
                    self._drop(job_id)
                    raise _read_error(exc, job_id) from None
                finally:
                    entry.used = time.monotonic()

    def _read(self, entry: _Followed, job_id: str, view: Callable[[jobs.JobState], T]) -> T:
        if entry.reader is None:
            entry.reader = jobs.JobReader(self.settings, job_id, topic_wait_s=TOPIC_WAIT_S)
        state = entry.reader.update()
        if not state.known:
            raise _not_found(f"no record of job {job_id} on the results or DLQ topic")
        return view(state)

    def _drop(self, job_id: str) -> None:
        entry = self.followed.pop(job_id, None)
        if entry is not None and entry.reader is not None:
            _close_later(entry.reader)

    def _evict(self, keep: str) -> None:
        """Close readers idle too long, then the least recently used beyond READERS_KEPT (not busy ones)."""
        now = time.monotonic()
        for job_id, entry in list(self.followed.items()):
            crowded = len(self.followed) >= READERS_KEPT
            if job_id != keep and not entry.lock.locked() and (crowded or now - entry.used > READER_IDLE_S):
                self._drop(job_id)

    def close_all(self) -> None:
        for job_id in list(self.followed):
            self._drop(job_id)


def _close_later(reader: jobs.JobReader) -> None:
    """Close a reader in a thread (closing a consumer blocks briefly); the caller does not wait."""

    def close() -> None:
        try:
            reader.close()
        except Exception:  # a consumer whose broker went away: nothing left to release
            log.debug("gateway bulk: closing a job reader failed", exc_info=True)

    asyncio.get_running_loop().run_in_executor(None, close)


def status_json(state: jobs.JobState) -> dict[str, Any]:
    failures = [
        {
            "index": row["index"],
            "record_id": row["record_id"],
            "code": row["error_code"],
            "message": row["error_message"],
        }
        for row in itertools.islice(jobs.failure_rows(state), MAX_FAILURES_LISTED)
    ]
    info = state.info
    return {
        "job_id": state.job_id,
        "total": state.total,
        "done": state.done,
        "failed": state.failed,
        "pending": state.pending,
        "complete": state.complete,
        "task": info.task if info is not None else None,
        "question": info.question if info is not None else None,
        "source": info.source if info is not None else None,
        "submitted_at": info.submitted_at if info is not None else None,
        "failures": failures,
    }


async def _status(bulk: BulkJobs, job_id: str) -> Response:
    return JSONResponse(await bulk.read(job_id, status_json))


async def _results(bulk: BulkJobs, job_id: str, fmt: str) -> Response:
    if fmt not in OUTPUT_FORMATS:
        raise _bad(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt[:40]!r}")
    text, complete = await bulk.read(job_id, lambda state: (rows_text(jobs.result_rows(state), fmt), state.complete))
    headers = {
        "content-disposition": f'attachment; filename="{job_id}.{fmt}"',
        "x-molm3d-job-complete": "true" if complete else "false",
    }
    return Response(text.encode("utf-8"), media_type=MEDIA_TYPES[fmt], headers=headers)

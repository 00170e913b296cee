"""Bulk jobs from the client's side: submit a file as item records, follow a job's progress, fetch its
results once per item in input order.

A job's records all carry its id as Kafka key, so its JobInfo, results and dead letters sit in one
partition of the results and DLQ topics: `JobReader` reads just those two partitions (no consumer
group, nothing committed) and keeps one outcome per item index, which is what makes at-least-once
delivery look exactly-once to the user.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from molm3d.v1 import bulk_pb2, common_pb2

from molm3d_core.chem.inputs import RawRecord, split_inputs
from molm3d_core.errors import MoleculeError

from . import messages
from .config import KafkaSettings, ensure_topics
from .worker import PRODUCER_OPTIONS

MAX_JOB_ITEMS = 1_000_000
# JobError codes (what the gateway's HTTP error body carries; the CLI shows the message only)
INVALID_REQUEST = "invalid_request"
EMPTY_INPUT = "empty_input"
TOO_MANY_MOLECULES = "too_many_molecules"


class JobError(ValueError):
    """A job that cannot be submitted or read as asked (shown to the user as is), with a short `code`."""

    def __init__(self, message: str, code: str = INVALID_REQUEST) -> None:
        super().__init__(message)
        self.code = code


class TopicMissing(JobError):
    """The results or DLQ topic does not exist: no job has been submitted to this broker yet."""


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:12]}"


def submit(
    settings: KafkaSettings,
    inputs: Sequence[str],
    task: str,
    *,
    question: str = "",
    decoding: common_pb2.DecodingOptions | None = None,
    job_id: str | None = None,
    max_items: int = MAX_JOB_ITEMS,
    progress: bool = False,
) -> tuple[str, int]:
    """`molm3d bulk submit`: the records of files or SMILES arguments as a job (see `submit_records`)."""
    _check_task(task, question)  # before reading any file
    return submit_records(
        settings,
        split_inputs(inputs),
        task,
        source=", ".join(inputs),
        question=question,
        decoding=decoding,
        job_id=job_id,
        max_items=max_items,
        progress=progress,
    )


def _check_task(task: str, question: str) -> None:
    if task not in messages.TASKS:
        raise JobError(f"task must be one of {messages.TASKS}, got {task!r}")
    if task == "ask" and not question.strip():
        raise JobError("task ask needs --question")


def submit_records(
    settings: KafkaSettings,
    records: Iterable[RawRecord | MoleculeError],
    task: str,
    *,
    source: str,
    question: str = "",
    decoding: common_pb2.DecodingOptions | None = None,
    job_id: str | None = None,
    max_items: int = MAX_JOB_ITEMS,
    progress: bool = False,
) -> tuple[str, int]:
    """Publish records cut out of the inputs (molm3d_core.chem.inputs: `split_inputs`, `split_text`) as a
    job: JobInfo on the results topic, then one BulkItem per record on the jobs topic (records that could
    not even be cut out go straight to the DLQ with the reason: one item each, so the job's count and
    order hold). `source` names the inputs in the JobInfo. JobError (`code` EMPTY_INPUT,
    TOO_MANY_MOLECULES, INVALID_REQUEST) before any connection. Returns (job id, item count) once the
    broker has acknowledged every record."""
    from kafka import KafkaProducer
    from tqdm import tqdm

    _check_task(task, question)
    remaining = iter(records)
    records = list(itertools.islice(remaining, max_items + 1))  # past the limit, the rest is only counted
    if not records:
        raise JobError(f"no molecules in {source}", EMPTY_INPUT)
    if len(records) > max_items:
        count = len(records) + sum(1 for _ in remaining)
        message = f"the job has {count} molecules; the limit is {max_items} (split the file)"
        raise JobError(message, TOO_MANY_MOLECULES)
    job_id = job_id or new_job_id()
    total = len(records)
    ensure_topics(settings)
    producer = KafkaProducer(**settings.client_options(), client_id="molm3d-bulk-submit", **PRODUCER_OPTIONS)
    key = messages.key(job_id)
    try:
        info = bulk_pb2.JobInfo(
            job_id=job_id,
            total=total,
            task=task,
            question=question,
            source=source,
            submitted_at=messages.now(),
        )
        futures = [
            producer.send(settings.results_topic, key=key, value=bulk_pb2.ResultRecord(job=info).SerializeToString())
        ]
        producer.flush()  # the JobInfo first: a reader that sees any result also knows the total
        for index, record in enumerate(tqdm(records, desc=f"submit {job_id}", unit="mol", disable=not progress)):
            item = bulk_pb2.BulkItem(job_id=job_id, index=index, total=total, task=task, question=question)
            if decoding is not None:
                item.decoding.CopyFrom(decoding)
            if isinstance(record, MoleculeError):
                item.molecule.id = record.record_id or ""
                value = messages.dead_letter(item, record.code.value, record.message, "INVALID_ARGUMENT")
                futures.append(producer.send(settings.dlq_topic, key=key, value=value))
                continue
            item.molecule.CopyFrom(_molecule(record))
            if len(record.text.encode("utf-8")) > messages.MAX_ITEM_BYTES:
                message = f"record is larger than {messages.MAX_ITEM_BYTES} bytes"
                item.molecule.text = ""
                value = messages.dead_letter(item, "item_too_large", message, "INVALID_ARGUMENT")
                futures.append(producer.send(settings.dlq_topic, key=key, value=value))
                continue
            futures.append(producer.send(settings.jobs_topic, key=key, value=item.SerializeToString()))
        producer.flush()
        for future in futures:
            future.get(timeout=0)  # raises if the broker did not take a record
    finally:
        producer.close(timeout=10)
    return job_id, total


def _molecule(record: RawRecord) -> common_pb2.MoleculeInput:
    return common_pb2.MoleculeInput(id=record.record_id, format=record.fmt, text=record.text)


def partition_for(job_id: str, partitions: int) -> int:
    """The partition kafka's default partitioner (murmur2, as the Java client) gives the job's key."""
    from kafka.partitioner.default import murmur2

    return (murmur2(messages.key(job_id)) & 0x7FFFFFFF) % partitions


@dataclass
class JobState:
    job_id: str
    info: bulk_pb2.JobInfo | None = None
    results: dict[int, bulk_pb2.ItemResult] = field(default_factory=dict)
    failures: dict[int, bulk_pb2.DeadLetter] = field(default_factory=dict)
    poison: list[bulk_pb2.DeadLetter] = field(default_factory=list)  # undecodable records (no index)
    duplicates: int = 0  # redelivered outcomes that were dropped

    @property
    def total(self) -> int | None:
        """From the JobInfo; a hand-made job without one: from the items' own `total`."""
        if self.info is not None:
            return self.info.total
        totals = [r.total for r in self.results.values()] + [d.total for d in self.failures.values()]
        return max(totals) if totals else None

    @property
    def known(self) -> bool:
        """Any record of the job arrived: its info, an item's outcome, or an undecodable record under its key."""
        return self.total is not None or bool(self.poison)

    @property
    def done(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> int:
        return sum(1 for i in self.failures if i not in self.results)

    @property
    def pending(self) -> int | None:
        return None if self.total is None else self.total - self.done - self.failed

    @property
    def complete(self) -> bool:
        return self.pending == 0

    def add_result(self, result: bulk_pb2.ItemResult) -> None:
        if result.index in self.results:
            self.duplicates += 1
        else:
            self.results[result.index] = result

    def add_failure(self, letter: bulk_pb2.DeadLetter) -> None:
        if letter.index < 0:
            self.poison.append(letter)
        elif letter.index in self.failures or letter.index in self.results:
            self.duplicates += 1
        else:
            self.failures[letter.index] = letter

    def summary(self) -> str:
        if self.total is None:  # only undecodable records arrived under this job's key
            text = f"{self.job_id}: {self.done} done, {self.failed} failed, size unknown (no decodable item)"
        else:
            text = f"{self.job_id}: {self.done} done, {self.failed} failed, {self.pending} pending of {self.total}"
        return text + (f"; {len(self.poison)} undecodable records" if self.poison else "")


class JobReader:
    """Reads one job's records from the results and DLQ topics, incrementally (call `update` again to
    see what arrived since). TopicMissing when a topic is still absent after `topic_wait_s` (a topic
    just created can take a moment to appear in the metadata)."""

    def __init__(self, settings: KafkaSettings, job_id: str, topic_wait_s: float = 30) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.settings, self.state = settings, JobState(job_id)
        self.consumer = KafkaConsumer(
            **settings.client_options(),
            client_id="molm3d-bulk-reader",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            self.partitions = []
            for topic in (settings.results_topic, settings.dlq_topic):
                found = self._partitions_of(topic, topic_wait_s)
                self.partitions.append(TopicPartition(topic, partition_for(job_id, len(found))))
            self.consumer.assign(self.partitions)
            self.consumer.seek_to_beginning(*self.partitions)
        except BaseException:
            self.consumer.close()  # a reader that failed to start keeps no connection open
            raise

    def _partitions_of(self, topic: str, timeout_s: float) -> list[int]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.consumer.partitions_for_topic(topic)
            if found:
                return sorted(found)
            if time.monotonic() > deadline:
                raise TopicMissing(f"topic {topic} not found on {self.settings.bootstrap}: has any job been submitted?")
            time.sleep(0.5)

    def update(self, timeout_s: float = 120) -> JobState:
        """Read what the two partitions hold now. Done when every partition's position reaches the end
        offset reported at the start: on Apache Kafka the exact end; Tansu 0.6 reports the start of the
        last record batch + 1 instead (REFERENCE.md section 3), which a fetch passes since it returns
        whole batches. (Idle polls are no end test: the first fetches of a new reader can be slow.)"""
        ends = self.consumer.end_offsets(self.partitions)
        deadline = time.monotonic() + timeout_s
        while any(self.consumer.position(tp) < ends[tp] for tp in self.partitions):
            if time.monotonic() > deadline:
                raise JobError(f"reading job {self.state.job_id} took over {timeout_s:.0f} s; is the broker up?")
            self._read(self.consumer.poll(timeout_ms=500, max_records=5000))
        self._read(self.consumer.poll(timeout_ms=0, max_records=5000))  # anything already fetched
        return self.state

    def _read(self, polled: dict[Any, list[Any]]) -> None:
        for tp, records in polled.items():
            for record in records:
                self._add(tp.topic, record)

    def _add(self, topic: str, record: Any) -> None:
        if record.key != messages.key(self.state.job_id):
            return  # another job hashed to the same partition
        if topic == self.settings.results_topic:
            value = bulk_pb2.ResultRecord.FromString(record.value)
            if value.WhichOneof("record") == "job":
                self.state.info = value.job
            else:
                self.state.add_result(value.result)
        else:
            self.state.add_failure(bulk_pb2.DeadLetter.FromString(record.value))

    def close(self) -> None:
        self.consumer.close()


def wait(reader: JobReader, timeout_s: float | None = None, progress: bool = True, interval_s: float = 1.0) -> JobState:
    """Follow the job until every item has an outcome (or `timeout_s` passes), with a progress bar."""
    from tqdm import tqdm

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    state = reader.update()
    bar = tqdm(total=state.total, desc=state.job_id, unit="mol", disable=not progress)
    try:
        while True:
            if bar.total is None and state.total is not None:
                bar.total = state.total
            bar.n = state.done + state.failed
            bar.set_postfix(failed=state.failed, refresh=False)
            bar.refresh()
            if state.complete or (deadline is not None and time.monotonic() > deadline):
                return state
            time.sleep(interval_s)
            state = reader.update()
    finally:
        bar.close()


def result_rows(state: JobState) -> Iterator[dict[str, Any]]:
    """One row per answered item, in input order: the rows `molm3d caption | ask | embed` write."""
    from ..client import answer_row, embedding_row

    for index in sorted(state.results):
        result = state.results[index]
        if result.WhichOneof("output") == "embedding":
            row = embedding_row(result.embedding)
        else:
            row = answer_row(result.task, result.answer)
            if result.task == "ask" and state.info is not None:
                row["question"] = state.info.question
        yield {
            "job_id": result.job_id,
            "index": index,
            **row,
            "worker": result.worker,
            "finished_at": result.finished_at,
        }


def failure_rows(state: JobState) -> Iterator[dict[str, Any]]:
    """Dead letters: indexed ones in input order (minus any later answered), then undecodable records."""
    letters = [state.failures[i] for i in sorted(state.failures) if i not in state.results] + state.poison
    for d in letters:
        row = {
            "job_id": d.job_id,
            "index": d.index if d.index >= 0 else None,
            "status": "error",
            "record_id": d.error.record_id or d.molecule.id or None,
            "error_status": d.status,
            "error_code": d.error.code,
            "error_message": d.error.message,
            "worker": d.worker,
            "finished_at": d.finished_at,
        }
        if d.payload:
            row["payload_hex"] = d.payload[:4096].hex()
        yield row

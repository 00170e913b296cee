"""The bulk worker: consume items from the jobs topic in a consumer group, run each through the served
pipeline (the gateway's Caption / Ask / Embed: no second inference path), publish results and dead
letters, and only then commit the consumed offsets.

Delivery: at-least-once. A worker that dies between publishing and committing has its batch
redelivered to another member of the group; the result carries the item's key (job id, index), so the
readers in jobs.py keep one result per item. Backpressure: at most `max_in_flight_batches` batches of
`max_batch` items are being answered at once; the next poll waits for the oldest batch to finish.
Any Kafka failure ends the session: clients are rebuilt and consumption resumes from the committed
offsets, so a broker restart costs a pause and some redelivery, never an item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from molm3d.v1 import bulk_pb2, common_pb2, gateway_pb2

from ..common.errors import ServiceError
from . import messages
from .config import KafkaSettings, ensure_topics

log = logging.getLogger("molm3d.bulk")

# Failures worth another try (the item itself may be fine); anything else is the item's verdict.
TRANSIENT = {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"}
# One record batch per published batch of results, not one per result: an embedding result is ~8 KB,
# over half of kafka-python's 16 KB default batch. Fewer, larger batches also keep the local broker's
# S3 object count down (Tansu lists a partition's objects to fetch: at ~10,000 one-record batches a
# reader from offset 0 made no progress, measured).
PRODUCER_OPTIONS = {"acks": "all", "linger_ms": 20, "batch_size": 512 * 1024}


class Pipeline(Protocol):
    """The gateway's methods, reached through a Serve handle or a gRPC channel. Each raises
    ServiceError for a failed call."""

    async def caption(self, request: gateway_pb2.CaptionRequest) -> gateway_pb2.Answer: ...
    async def ask(self, request: gateway_pb2.AskRequest) -> gateway_pb2.Answer: ...
    async def embed(self, request: gateway_pb2.EmbedRequest) -> gateway_pb2.Embedding: ...


@dataclass
class WorkerOptions:
    max_batch: int = 32  # items per poll
    max_in_flight_batches: int = 2
    attempts: int = 5  # tries per item for transient failures (backoff 1, 2, 4, ... s)
    poll_timeout_ms: int = 500
    max_poll_interval_ms: int = 600_000  # a batch of captions on CPU can take minutes
    drain_timeout_s: float = 45  # on stop: time to finish the batches in hand (k8s grace period is 60 s)


@dataclass
class BatchOutcome:
    offsets: dict[Any, int]  # TopicPartition -> next offset to consume
    records: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # (topic, key, value)
    ok: int = 0
    failed: int = 0


async def answer(pipeline: Pipeline, item: bulk_pb2.BulkItem) -> bulk_pb2.ItemResult:
    """One item through the pipeline (raises ServiceError)."""
    result = bulk_pb2.ItemResult(job_id=item.job_id, index=item.index, total=item.total, task=item.task)
    if item.task == "caption":
        result.answer.CopyFrom(
            await pipeline.caption(gateway_pb2.CaptionRequest(molecule=item.molecule, decoding=item.decoding))
        )
    elif item.task == "ask":
        request = gateway_pb2.AskRequest(molecule=item.molecule, question=item.question, decoding=item.decoding)
        result.answer.CopyFrom(await pipeline.ask(request))
    else:
        result.embedding.CopyFrom(await pipeline.embed(gateway_pb2.EmbedRequest(molecule=item.molecule)))
    result.worker, result.finished_at = messages.worker_name(), messages.now()
    return result


class BulkWorker:
    def __init__(
        self,
        settings: KafkaSettings,
        pipeline: Pipeline,
        options: WorkerOptions | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        membership: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """`membership`: None = join the consumer group (partitions balanced by the broker); else a
        function giving (rank, count) of this worker among its peers, and the worker takes the jobs
        partitions p with p % count == rank itself, using the group only to store offsets."""
        self.settings, self.pipeline = settings, pipeline
        self.options = options or WorkerOptions()
        self.on_batch = on_batch
        self.membership = membership
        self.last_poll = time.monotonic()  # liveness: the loop is turning

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, rebuilding the Kafka clients after any failure."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down, rebalance during commit, ...: start over
                log.warning("bulk session ended (%s: %s); reconnecting in 2 s", type(exc).__name__, exc)
                await _sleep_unless(stop, 2.0)

    async def _session(self, stop: asyncio.Event) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        s, o = self.settings, self.options
        loop = asyncio.get_running_loop()
        # kafka-python's consumer is not thread-safe: every call to it runs on this one thread.
        kafka_thread = ThreadPoolExecutor(1, thread_name_prefix="molm3d-kafka")

        def on_kafka_thread(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
            return loop.run_in_executor(kafka_thread, fn, *args)

        consumer = producer = None
        pending: deque[asyncio.Task[BatchOutcome]] = deque()
        try:
            await on_kafka_thread(ensure_topics, s)
            consumer = await on_kafka_thread(
                lambda: KafkaConsumer(
                    **s.client_options(),
                    group_id=s.group,
                    client_id="molm3d-bulk-worker",
                    enable_auto_commit=False,
                    # never "latest": the local broker's end offsets can be wrong (REFERENCE.md section 3)
                    auto_offset_reset="earliest",
                    session_timeout_ms=s.session_timeout_ms,
                    heartbeat_interval_ms=max(500, s.session_timeout_ms // 5),
                    max_poll_interval_ms=o.max_poll_interval_ms,
                    max_poll_records=o.max_batch,
                )
            )
            producer = await on_kafka_thread(
                lambda: KafkaProducer(**s.client_options(), client_id="molm3d-bulk-worker", **PRODUCER_OPTIONS)
            )
            assigned = await on_kafka_thread(self._take_partitions, consumer)
            log.info("bulk worker consuming %s as group %s (%s): %s", s.jobs_topic, s.group, s.bootstrap, assigned)
            while not stop.is_set():
                self.last_poll = time.monotonic()
                if self.membership is not None and self.membership() != assigned:
                    log.info("replica set changed %s -> %s: taking partitions again", assigned, self.membership())
                    break
                if len(pending) < o.max_in_flight_batches:
                    polled = await on_kafka_thread(consumer.poll, o.poll_timeout_ms, o.max_batch)
                    records = [r for batch in polled.values() for r in batch]
                    if records:
                        pending.append(asyncio.create_task(self._process(records)))
                elif pending:
                    await asyncio.wait([pending[0]])
                # Publish and commit finished batches strictly in consumption order.
                while pending and pending[0].done():
                    await self._complete(pending.popleft(), producer, consumer, on_kafka_thread)
            # Stopping (scale-down, SIGTERM): finish the batches in hand rather than leave them to
            # redelivery; bounded, since the platform's grace period is.
            async with asyncio.timeout(o.drain_timeout_s):
                while pending:
                    await self._complete(pending.popleft(), producer, consumer, on_kafka_thread)
        finally:
            for task in pending:
                task.cancel()
            if consumer is not None:
                await on_kafka_thread(consumer.close)
            if producer is not None:
                await loop.run_in_executor(None, lambda: producer.close(timeout=5))
            kafka_thread.shutdown(wait=False)

    def _take_partitions(self, consumer: Any) -> tuple[int, int] | str:
        from kafka import TopicPartition

        topic = self.settings.jobs_topic
        if self.membership is None:
            consumer.subscribe([topic])
            return "partitions from the group coordinator"
        rank, count = self.membership()
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        if not partitions:
            raise RuntimeError(f"topic {topic} has no partitions (yet)")
        consumer.assign([TopicPartition(topic, p) for p in partitions if p % count == rank])
        return rank, count

    async def _complete(self, task: asyncio.Task, producer: Any, consumer: Any, on_kafka_thread: Callable) -> None:
        outcome = await task
        await asyncio.get_running_loop().run_in_executor(None, self._publish, producer, outcome)
        await on_kafka_thread(self._commit, consumer, outcome.offsets)
        log.info("batch: %d answered, %d dead-lettered, committed %s", outcome.ok, outcome.failed,
                 {f"{tp.topic}/{tp.partition}": o for tp, o in outcome.offsets.items()})  # fmt: skip
        if self.on_batch:
            self.on_batch(outcome)

    async def _process(self, records: list[Any]) -> BatchOutcome:
        from kafka import TopicPartition

        outcome = BatchOutcome(offsets={})
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            outcome.offsets[tp] = max(outcome.offsets.get(tp, 0), r.offset + 1)
        decoded = [messages.decode_item(r.value, r.headers, r.key) for r in records]
        items = [d for d in decoded if isinstance(d, bulk_pb2.BulkItem)]
        answers = await asyncio.gather(*(self._answer_with_retries(item) for item in items))
        by_item = dict(zip((id(i) for i in items), answers, strict=True))
        for record, item in zip(records, decoded, strict=True):
            if isinstance(item, messages.BadItem):
                payload = record.value or b"" if item.code == "undecodable" else b""
                value = messages.dead_letter(item.item, item.code, item.message, "INVALID_ARGUMENT", payload)
                outcome.records.append((self.settings.dlq_topic, record.key or b"", value))
                outcome.failed += 1
                continue
            result = by_item[id(item)]
            if isinstance(result, ServiceError):
                detail = result.detail
                value = messages.dead_letter(item, detail.code, detail.message, result.code_name)
                outcome.records.append((self.settings.dlq_topic, messages.key(item.job_id), value))
                outcome.failed += 1
            else:
                record_value = bulk_pb2.ResultRecord(result=result).SerializeToString()
                outcome.records.append((self.settings.results_topic, messages.key(item.job_id), record_value))
                outcome.ok += 1
        return outcome

    async def _answer_with_retries(self, item: bulk_pb2.BulkItem) -> bulk_pb2.ItemResult | ServiceError:
        for attempt in range(self.options.attempts):
            try:
                return await answer(self.pipeline, item)
            except ServiceError as err:
                if err.code_name not in TRANSIENT or attempt == self.options.attempts - 1:
                    return err
                log.info("job %s item %d: %s; retrying", item.job_id, item.index, err)
                await asyncio.sleep(2**attempt)
            except Exception as exc:  # a bug must not sink the batch: the item is dead-lettered with the reason
                log.exception("job %s item %d failed", item.job_id, item.index)
                return ServiceError.make(grpc.StatusCode.INTERNAL, "internal", f"{type(exc).__name__}: {exc}", "bulk")
        raise AssertionError("unreachable")

    @staticmethod
    def _publish(producer: Any, outcome: BatchOutcome) -> None:
        """Send the batch's records and wait until the broker has them all (acks=all); raise otherwise."""
        futures = [producer.send(topic, key=key or None, value=value) for topic, key, value in outcome.records]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=0)  # raises the send's error, if any

    @staticmethod
    def _commit(consumer: Any, offsets: dict[Any, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


# -- pipelines ---------------------------------------------------------------------------------------


class _Gateway:
    """Pipeline over the gateway's methods; subclasses say how a call reaches it."""

    async def _call(self, method: str, request: Any) -> Any:
        raise NotImplementedError

    async def caption(self, request: gateway_pb2.CaptionRequest) -> gateway_pb2.Answer:
        return await self._call("Caption", request)

    async def ask(self, request: gateway_pb2.AskRequest) -> gateway_pb2.Answer:
        return await self._call("Ask", request)

    async def embed(self, request: gateway_pb2.EmbedRequest) -> gateway_pb2.Embedding:
        return await self._call("Embed", request)


class HandlePipeline(_Gateway):
    """The gateway deployment inside the same Ray cluster (what `molm3d serve --kafka` runs)."""

    def __init__(self, app_name: str = "gateway", deployment: str = "Gateway") -> None:
        from ray import serve

        # Unchecked: the gateway application may still be deploying when the worker starts.
        self.handle = serve.get_deployment_handle(deployment, app_name=app_name, _check_exists=False)

    async def _call(self, method: str, request: Any) -> Any:
        from ray.exceptions import RayTaskError

        try:
            return await getattr(self.handle, method).remote(request)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ServiceError):
                raise cause from None
            raise
        except ServiceError:
            raise
        except Exception as exc:  # replica died, back-pressure, ...: worth a retry
            raise ServiceError.make(
                grpc.StatusCode.UNAVAILABLE, "unavailable", f"{type(exc).__name__}: {exc}", "bulk"
            ) from None


class GrpcPipeline(_Gateway):
    """The gateway over gRPC (`molm3d bulk worker --gateway HOST:PORT`, e.g. a k8s Deployment). An asyncio
    channel, so a whole batch is in flight at once and the served stages can batch it."""

    def __init__(self, target: str, token: str | None = None, timeout_s: float = 600) -> None:
        import os

        token = token if token is not None else os.environ.get("MOLM3D_API_TOKEN")
        self.target, self.timeout_s = target, timeout_s
        self.metadata = [("application", "gateway")] + ([("authorization", f"Bearer {token}")] if token else [])
        self._stub: Any = None

    def _stub_for_loop(self) -> Any:
        if self._stub is None:  # the channel belongs to the running event loop
            from molm3d.v1 import gateway_pb2_grpc

            from ..client import MAX_MESSAGE_BYTES

            channel = grpc.aio.insecure_channel(
                self.target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
            )
            self._stub = gateway_pb2_grpc.Molm3DServiceStub(channel)
        return self._stub

    async def _call(self, method: str, request: Any) -> Any:
        from ..common.errors import error_detail

        try:
            call = getattr(self._stub_for_loop(), method)
            return await call(request, metadata=self.metadata, timeout=self.timeout_s)
        except grpc.RpcError as err:
            detail = error_detail(err)
            raise ServiceError(
                err.code().name, common_pb2.ErrorDetail(code=detail.code, message=detail.message).SerializeToString()
            ) from None

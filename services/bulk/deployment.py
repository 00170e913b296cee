"""BulkWorker: the bulk worker as a Serve deployment beside the stages (`molm3d serve --kafka`). It
answers items through the gateway deployment's handle; scale with num_replicas (at most the jobs
topic's partition count do work).

Partitions (user_config `assignment`): `replicas` (default) splits the jobs partitions by Serve replica
rank (p % replicas == rank), re-split when the replica set changes; the consumer group only stores
offsets. Serve already knows which replicas are alive, and this avoids a Tansu 0.6 defect: its group
coordinator never evicts a SIGKILLed member, whose partitions then stall (measured: a fresh member got
no partitions within 40 s, or only half of them). `group` uses Kafka's group protocol instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

from ray import serve
from ray.serve.metrics import Counter, Histogram

from ..common.settings import setting
from .config import WithKafka
from .worker import BatchOutcome, BulkWorker, HandlePipeline, WorkerOptions

log = logging.getLogger("molm3d.bulk")


@dataclass(frozen=True)
class BulkSettings(WithKafka):
    """user_config of the BulkWorker deployment: `kafka` (KafkaSettings fields, over the MOLM3D_KAFKA_*
    environment; config.WithKafka), how partitions are assigned, and the consumer loop's WorkerOptions."""

    assignment: Literal["replicas", "group"] = "replicas"
    max_batch: int = setting(WorkerOptions.max_batch, ge=1)
    max_in_flight_batches: int = setting(WorkerOptions.max_in_flight_batches, ge=1)
    attempts: int = setting(WorkerOptions.attempts, ge=1)
    poll_timeout_ms: int = setting(WorkerOptions.poll_timeout_ms, ge=1)
    max_poll_interval_ms: int = setting(WorkerOptions.max_poll_interval_ms, ge=1)
    drain_timeout_s: float = setting(WorkerOptions.drain_timeout_s, ge=0)

    def worker_options(self) -> WorkerOptions:
        return WorkerOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(WorkerOptions)})


@serve.deployment(name="BulkWorker")
class BulkWorkerDeployment:
    def __init__(self) -> None:
        # The worker's own log lines go to this replica's Serve log file, like the stages' do.
        log.setLevel(logging.INFO)
        for handler in logging.getLogger("ray.serve").handlers:
            log.addHandler(handler)
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self.items = Counter(
            "molm3d_bulk_items_total", description="bulk items answered (ok) or dead-lettered", tag_keys=("outcome",)
        )
        self.batch_size = Histogram(
            "molm3d_bulk_batch_size", description="items per consumed batch", boundaries=[1, 2, 4, 8, 16, 32, 64, 128]
        )

    async def reconfigure(self, config: dict[str, Any]) -> None:
        """(Re)start the consumer loop with the user_config: {kafka: {...KafkaSettings}, max_batch, ...}."""
        s = BulkSettings.from_user_config(config)
        settings, options, assignment = s.kafka_settings(), s.worker_options(), s.assignment
        membership = _replica_rank if assignment == "replicas" else None
        await self._halt()
        self._stop = asyncio.Event()
        worker = BulkWorker(settings, HandlePipeline(), options, on_batch=self._observe, membership=membership)
        self._task = asyncio.create_task(worker.run(self._stop))
        log.info("bulk worker configured: %s, %s, assignment %s", settings.public(), options, assignment)

    def _observe(self, outcome: BatchOutcome) -> None:
        self.batch_size.observe(outcome.ok + outcome.failed)
        if outcome.ok:
            self.items.inc(outcome.ok, tags={"outcome": "ok"})
        if outcome.failed:
            self.items.inc(outcome.failed, tags={"outcome": "failed"})

    async def _halt(self) -> None:
        if self._task is not None:
            self._stop.set()
            try:
                await asyncio.wait_for(self._task, 30)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None

    async def check_health(self) -> None:
        """Serve restarts the replica if the consumer loop has died."""
        if self._task is not None and self._task.done():
            raise RuntimeError(f"bulk consumer loop ended: {self._task.exception()!r}")

    async def ready(self) -> bool:
        return True

    async def __del__(self) -> None:
        await self._halt()

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        message = "the bulk worker has no HTTP API; use `molm3d bulk submit`"
        return JSONResponse({"error": {"status": "NOT_FOUND", "message": message}}, status_code=404)


def _replica_rank() -> tuple[int, int]:
    context = serve.get_replica_context()
    return context.rank.rank, context.world_size


app = BulkWorkerDeployment.bind()

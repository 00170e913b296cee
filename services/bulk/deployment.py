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
import logging
from typing import Any

from ray import serve
from ray.serve.metrics import Counter, Histogram

from .config import KafkaSettings
from .worker import BatchOutcome, BulkWorker, HandlePipeline, WorkerOptions

log = logging.getLogger("molm3d.bulk")


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
        settings = KafkaSettings.from_env(**config.get("kafka", {}))
        options = WorkerOptions(**{k: v for k, v in config.items() if k in WorkerOptions.__dataclass_fields__})
        assignment = config.get("assignment", "replicas")
        if assignment not in ("replicas", "group"):
            raise ValueError(f"assignment must be replicas or group, got {assignment!r}")
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

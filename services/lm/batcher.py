"""Dynamic batching for decoding: a batch stays open while requests keep arriving.

`@serve.batch` closes a batch a fixed time after its first request, so one window length must
serve two cases: a lone request (which waits the whole window for nothing) and a burst that
trickles in from the conformer and encoder stages (which a short window splits into many small
batches; decoding then holds the CPU and the next arrivals are slower still). Here a batch closes
when it is full, when no request has arrived for `idle_s`, or `max_wait_s` after it opened,
whichever comes first. One batch runs at a time; requests that arrive meanwhile form the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        max_batch_size: int = 32,
        max_wait_s: float = 5.0,
        idle_s: float = 1.0,
    ) -> None:
        self.run = run
        self.configure(max_batch_size, max_wait_s, idle_s)
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    def configure(self, max_batch_size: int, max_wait_s: float, idle_s: float) -> None:
        if max_batch_size < 1 or max_wait_s < 0 or idle_s < 0:
            raise ValueError(f"bad batching settings: {max_batch_size=}, {max_wait_s=}, {idle_s=}")
        self.max_batch_size, self.max_wait_s, self.idle_s = max_batch_size, max_wait_s, idle_s

    @property
    def waiting(self) -> int:
        """Requests queued for a batch that has not started."""
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, item: T) -> R:
        """The result for `item`, computed in some batch; if that batch fails, `item` is run alone and gets
        its own result or exception."""
        loop = asyncio.get_running_loop()
        if self._queue is None:  # created on the loop that serves the requests
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        closes_at = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():  # queued while the previous batch ran: take without waiting
                batch.append(self._queue.get_nowait())
                continue
            wait = min(self.idle_s, closes_at - loop.time())
            if wait <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), wait))
            except TimeoutError:
                break
        return [(item, f) for item, f in batch if not f.done()]  # callers that gave up are dropped

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await self._run(batch)
            except Exception as exc:
                if len(batch) == 1:
                    self._settle(batch[0][1], exc)
                    continue
                # One request's fault must not fail the others: run each alone, so that only the
                # one(s) that fail on their own get the error. The worker lives on either way.
                for item, future in batch:
                    try:
                        (result,) = await self._run([(item, future)])
                    except Exception as own:
                        self._settle(future, own)
                    else:
                        self._settle(future, result)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                self._settle(future, result)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> list[R]:
        results = await self.run([item for item, _ in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"a batch of {len(batch)} requests gave {len(results)} results")
        return results

    @staticmethod
    def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
        if future.done():  # the caller gave up
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

"""The LM stage's scheduler: the library's continuous decoder on a thread of its own.

Callers on the replica's event loop `submit` a sequence and await it; the decoding thread admits
waiting sequences into the running batch between steps (at most `max_prefill` per step, so that a
burst of arrivals does not stall the running ones for long), decodes one token for every running
sequence, and hands each finished one back at once. A caller that gives up (deadline, disconnect)
cancels its sequence, which leaves the batch before the next step.

It also keeps what admission control needs to predict a new request's latency (`load`): the running
sequences' progress, the queue, the measured step time per batch size, and recent answer lengths.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from molm3d_core.models.continuous import ContinuousDecoder, Sequence

log = logging.getLogger("ray.serve")
_EWMA = 0.2  # weight of the newest measurement


class DecodeLoop:
    def __init__(
        self,
        decoder: ContinuousDecoder,
        max_prefill: int = 4,
        on_step: Callable[[int], None] = lambda batch_size: None,
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        self.decoder, self.max_prefill, self._nice = decoder, max_prefill, 0
        self.on_step, self.on_idle = on_step, on_idle  # called on the decoding thread
        self._closed = False
        self._waiting: collections.deque[tuple[Sequence, asyncio.Future, asyncio.AbstractEventLoop]] = (
            collections.deque()
        )
        self._futures: dict[int, tuple[asyncio.Future, asyncio.AbstractEventLoop]] = {}
        self._wake = threading.Condition()
        self._step_s: dict[int, float] = {}  # batch size -> EWMA seconds of one step
        self._prefill_s: float | None = None  # EWMA seconds of prefilling one sequence
        # (generated tokens, max_new_tokens) of recent answers
        self._lengths: collections.deque[tuple[int, int]] = collections.deque(maxlen=200)
        self._thread = threading.Thread(target=self._run, name="lm-decode", daemon=True)
        self._thread.start()

    @property
    def max_batch_size(self) -> int:
        return self.decoder.max_batch_size

    def configure(self, max_batch_size: int, max_prefill: int, nice: int = 0) -> None:
        """New limits, from the next step on (running sequences are never dropped), and the decoding
        thread's CPU priority (Unix nice; this thread only: the replica's event loop keeps its own)."""
        if max_batch_size < 1 or max_prefill < 1:
            raise ValueError(f"bad scheduler settings: {max_batch_size=}, {max_prefill=}")
        with self._wake:
            self.decoder.max_batch_size, self.max_prefill = max_batch_size, max_prefill
        if nice != self._nice:
            try:
                os.setpriority(os.PRIO_PROCESS, self._thread.native_id, nice)
                self._nice = nice
            except PermissionError:  # raising a priority back needs CAP_SYS_NICE
                log.warning("lm: cannot change the decoding thread's nice from %d to %d", self._nice, nice)

    def close(self) -> None:
        """Stop the thread once its running and waiting sequences are done."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    async def submit(self, seq: Sequence) -> Sequence:
        """`seq`, decoded to its end (or the exception that stopped it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Sequence] = loop.create_future()
        with self._wake:
            self._waiting.append((seq, future, loop))
            self._wake.notify()
        try:
            return await future
        except asyncio.CancelledError:
            seq.cancel()  # read by the decoding thread before its next step
            raise

    def load(self) -> dict[str, Any]:
        """A snapshot for admission control (see services/gateway/admission.py)."""
        with self._wake:
            running = [(len(s.tokens), s.decoding.max_new_tokens) for s in self.decoder.running if not s.done]
            waiting = len(self._waiting)
        return {
            "slots": self.decoder.max_batch_size,
            "running": running,
            "waiting": waiting,
            "step_s": dict(self._step_s),
            "prefill_s": self._prefill_s,
            "lengths": list(self._lengths),
        }

    # -- the decoding thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self.decoder.running:
                    if self._closed:
                        return
                    self._wake.wait()
                joining = []
                while self._waiting and len(joining) < min(self.max_prefill, self.decoder.free_slots):
                    seq, future, loop = self._waiting.popleft()
                    if not seq.done:  # its caller gave up while it waited
                        joining.append(seq)
                        self._futures[id(seq)] = (future, loop)
            try:
                self._admit(joining)
                if self.decoder.running:
                    self._finish(self.decoder.step())
                    d = self.decoder.last_step
                    self._measure(self._step_s, d.batch_size, d.seconds)
                    self.on_step(d.batch_size)
                    if not self.decoder.running:
                        self.on_idle()
            except Exception as exc:  # a fault of the model itself: fail what is running, keep serving
                log.exception("lm: a decoding step failed; failing its %d sequences", len(self.decoder.running))
                for seq in self.decoder.running:
                    self._settle(seq, exc)
                self.decoder = ContinuousDecoder(self.decoder.lm, self.decoder.max_batch_size)

    def _admit(self, joining: list[Sequence]) -> None:
        if not joining:
            return
        try:
            finished = self.decoder.add(joining)
        except Exception as exc:
            if len(joining) == 1:
                self._settle(joining[0], exc)
                return
            # One sequence's fault must not fail the others: prefill each alone.
            for seq in joining:
                seq.tokens.clear()
                seq._ngrams.clear()
                try:
                    self._finish(self.decoder.add([seq]))
                except Exception as own:
                    self._settle(seq, own)
            return
        self._finish(finished)
        p = self.decoder.last_prefill
        self._prefill_s = self._ewma(self._prefill_s, p.seconds / max(1, p.batch_size))

    def _finish(self, finished: list[Sequence]) -> None:
        for seq in finished:
            if seq.finish_reason in ("eos", "length"):
                self._lengths.append((len(seq.tokens), seq.decoding.max_new_tokens))
            self._settle(seq, seq)

    def _settle(self, seq: Sequence, outcome: Sequence | BaseException) -> None:
        future, loop = self._futures.pop(id(seq), (None, None))
        if future is None:
            return

        def settle() -> None:
            if future.done():  # the caller gave up
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        loop.call_soon_threadsafe(settle)

    @staticmethod
    def _ewma(old: float | None, new: float) -> float:
        return new if old is None else (1 - _EWMA) * old + _EWMA * new

    def _measure(self, table: dict[int, float], key: int, seconds: float) -> None:
        table[key] = self._ewma(table.get(key), seconds)

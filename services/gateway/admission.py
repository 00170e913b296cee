"""Admission control: take a request only when it can be answered inside its deadline.

The LM stage reports its decoding batch (`LMStage.load`: the running sequences and their progress,
its queue, the measured step time per batch size, recent answer lengths); the gateway polls it every
`poll_s`, and adds what it has sent to the LM since and what is still in the conformer and encoder
stages. From that it predicts when a new request would finish under continuous batching (a slot frees
up as each running sequence ends) and refuses the request at once, with RESOURCE_EXHAUSTED and a retry
hint, when the prediction passes `margin` x its deadline. Overload thus costs a client a fast refusal
instead of a timeout, and the queue never holds more than the stack can serve in time.

Before the LM has measured a step (a fresh stack) every request is admitted; the queue limits in
serve.yaml still bound the stack.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..common.errors import ServiceError

log = logging.getLogger("ray.serve")
_EWMA = 0.2
_POLL_WHILE_IDLE_S = 30.0  # keep reading the LM's load this long after the last request
# Prior for batch sizes not yet measured: one more sequence adds this fraction of a batch-of-one step
# (measured on 2 CPU cores: 75 ms at 1, 110-140 ms at 8, 235-255 ms at 32).
_PER_SEQUENCE = 0.1


def step_seconds(measured: dict[int, float], batch_size: int) -> float:
    """One decoding step at `batch_size`: measured, else a line fitted to the measured sizes."""
    if batch_size in measured:
        return measured[batch_size]
    sizes = sorted(measured)
    if len(sizes) == 1:
        (b0,) = sizes
        return measured[b0] * (1 + _PER_SEQUENCE * batch_size) / (1 + _PER_SEQUENCE * b0)
    n = len(sizes)
    mean_b, mean_t = sum(sizes) / n, sum(measured[b] for b in sizes) / n
    var = sum((b - mean_b) ** 2 for b in sizes)
    slope = max(0.0, sum((b - mean_b) * (measured[b] - mean_t) for b in sizes) / var)
    return max(min(measured.values()), mean_t + slope * (batch_size - mean_b))


def predict_seconds(load: dict[str, Any], ahead: int, max_new_tokens: int, encode_s: float) -> float | None:
    """Seconds until a new request with `ahead` requests before it would be answered; None = no measurement."""
    if not load.get("step_s") or max_new_tokens > load.get("max_new_tokens_limit", max_new_tokens):
        return None  # nothing measured yet, or a limit the LM refuses (INVALID_ARGUMENT, from the LM)

    def expected(limit: int) -> int:
        """A typical length (p90) of recent answers with the same token limit; the limit itself until
        5 such answers are known (a short-answer task must not make captions look short)."""
        same = sorted(n for n, m in load["lengths"] if m == limit)
        return max(1, same[int(0.9 * (len(same) - 1))]) if len(same) >= 5 else limit

    slots = load["slots"]
    # Steps until each slot is free: a running sequence is expected to reach a typical length (at least a
    # few more tokens when it is already past it), never its limit.
    free_at = [max(1, min(m - g, max(expected(m) - g, 8))) for g, m in load["running"]]
    free_at += [0] * max(0, slots - len(free_at))
    heapq.heapify(free_at)
    for _ in range(ahead):  # each one ahead takes the first free slot for a typical length
        heapq.heappush(free_at, heapq.heappop(free_at) + expected(max_new_tokens))
    steps = heapq.heappop(free_at) + expected(max_new_tokens)
    batch = max(1, min(slots, len(load["running"]) + ahead + 1))
    prefill = (load.get("prefill_s") or 0.0) * (ahead + 1)
    return encode_s + prefill + steps * step_seconds(load["step_s"], batch)


@dataclass
class Admission:
    margin: float = 0.8
    poll_s: float = 0.25
    load: dict[str, Any] | None = None  # the LM's last report
    load_asked_at: float = 0.0
    encode_s: float = 0.0  # EWMA seconds of conformer + encoder for one request
    before_lm: int = 0  # admitted requests still in the conformer and encoder stages
    at_lm: int = 0  # requests sent to the LM and not answered yet
    _recent_encodes: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=50))
    _poller: Any = None
    _logged_at: float = 0.0
    _last_check: float = 0.0

    def check(self, max_new_tokens: int, timeout_s: float, stage: str = "gateway") -> float | None:
        """RESOURCE_EXHAUSTED when a new request's predicted answer time is past `margin` x `timeout_s`;
        else that prediction (None: no report yet)."""
        if self.load is None:
            return None
        # Ahead of a new request: those still in the first stages, and those sent to the LM that are not
        # decoding yet (in the LM's queue or in Serve's queue in front of it, which the LM cannot see).
        ahead = self.before_lm + max(self.load["waiting"], self.at_lm - len(self.load["running"]))
        predicted = predict_seconds(self.load, ahead, max_new_tokens, self.encode_s)
        if predicted is None:
            return None
        budget = self.margin * timeout_s
        if predicted <= budget:
            return predicted
        # Not the load's fault when even an idle stack (the fastest encode seen lately) would miss the whole
        # deadline: a retry would not help.
        fastest = min(self._recent_encodes, default=0.0)
        idle = predict_seconds({**self.load, "running": [], "waiting": 0}, 0, max_new_tokens, fastest)
        if idle is not None and idle > timeout_s:
            raise ServiceError.make(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "deadline_exceeded",
                f"this request's deadline of {timeout_s:.3g} s is shorter than an answer takes on an idle stack "
                f"(about {idle:.3g} s)",
                stage,
            )
        retry_s = max(1, math.ceil(predicted - budget))
        now = time.monotonic()
        if now - self._logged_at > 5:  # a flood of refusals would flood the log
            self._logged_at = now
            running = len(self.load["running"])
            log.info("refusing for load: predicted %.2f s (%d ahead, %d running, encode %.2f s) > %.2f s",
                     predicted, ahead, running, self.encode_s, budget)  # fmt: skip
        raise ServiceError.make(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "overloaded",
            f"busy: an answer would take about {predicted:.3g} s, past this request's deadline of {timeout_s:.3g} s; "
            f"retry in {retry_s} s",
            stage,
            retry_after_ms=retry_s * 1000,
        )

    def encoded(self, seconds: float | None) -> None:
        """A request left the encoder for the LM after `seconds` in the first two stages (None: it had no
        molecule to encode, and says nothing about their speed)."""
        self.before_lm -= 1
        self.at_lm += 1
        if seconds is None:
            return
        self.encode_s = seconds if not self.encode_s else (1 - _EWMA) * self.encode_s + _EWMA * seconds
        self._recent_encodes.append(seconds)

    def answered(self) -> None:
        """A request sent to the LM came back (answer or error)."""
        self.at_lm -= 1

    def start(self, ask_load: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Poll the LM's load in the background (on the calling event loop) while requests keep coming."""
        import asyncio

        self._last_check = time.monotonic()
        if self._poller is not None and not self._poller.done():
            return
        self.load = None  # stale after an idle spell: admit until the first fresh report (one poll away)

        async def poll() -> None:
            # Only while requests arrive: an idle gateway does not keep calling the LM (and its access log).
            while time.monotonic() - self._last_check < _POLL_WHILE_IDLE_S:
                asked = time.monotonic()
                try:
                    self.load = await asyncio.wait_for(ask_load(), timeout=max(1.0, 4 * self.poll_s))
                    self.load_asked_at = asked
                except Exception:  # LM restarting or slow to answer: admit on the last report until it is back
                    pass
                await asyncio.sleep(self.poll_s)

        self._poller = asyncio.get_running_loop().create_task(poll())

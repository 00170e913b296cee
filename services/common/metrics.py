"""Prometheus metrics of one stage, exported by Ray's metrics agent (names get Ray's `ray_` prefix).

Per stage: request latency histogram, batch sizes, requests in flight (queue depth inside the
replica), cache hits/misses, errors by gRPC status and molm3d error code.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from ray.serve.metrics import Counter, Gauge, Histogram

_LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
_BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


class StageMetrics:
    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.latency = Histogram(
            "molm3d_request_latency_seconds",
            description="request latency per stage and method",
            boundaries=_LATENCY_BUCKETS,
            tag_keys=("stage", "method"),
        )
        self.batch_size = Histogram(
            "molm3d_batch_size", description="requests per model call", boundaries=_BATCH_BUCKETS, tag_keys=("stage",)
        )
        self.in_flight = Gauge(
            "molm3d_requests_in_flight", description="requests being served by this replica", tag_keys=("stage",)
        )
        self.errors = Counter(
            "molm3d_errors_total",
            description="failed requests by gRPC status and error code",
            tag_keys=("stage", "status", "code"),
        )
        self.cache = Counter(
            "molm3d_cache_requests_total",
            description="cache lookups by result (hit | miss)",
            tag_keys=("stage", "result"),
        )
        self._in_flight = 0

    @contextmanager
    def request(self, method: str) -> Iterator[None]:
        self._in_flight += 1
        self.in_flight.set(self._in_flight, tags={"stage": self.stage})
        start = time.perf_counter()
        try:
            yield
        finally:
            self._in_flight -= 1
            self.in_flight.set(self._in_flight, tags={"stage": self.stage})
            self.latency.observe(time.perf_counter() - start, tags={"stage": self.stage, "method": method})

    def error(self, status: str, code: str) -> None:
        self.errors.inc(tags={"stage": self.stage, "status": status, "code": code})

    def batch(self, size: int) -> None:
        self.batch_size.observe(size, tags={"stage": self.stage})

    def cache_lookup(self, hit: bool) -> None:
        self.cache.inc(tags={"stage": self.stage, "result": "hit" if hit else "miss"})

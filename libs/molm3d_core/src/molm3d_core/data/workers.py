"""A process pool with a time limit per job, results in job order.

RDKit's ETKDG can run for many minutes on a few polycyclic, stereo-rich molecules (ChEBI has some; e.g.
a 36-heavy-atom diterpenoid with 11 stereocentres did not embed in 45 s), and C++ code cannot be
interrupted by a Python signal. `guarded_map` therefore runs every job in a worker process, lets the job
announce its time budget once it knows its size, and kills and replaces a worker that overruns it; the
job's result then comes from `fallback` in the parent. A worker that dies (a crash in C++) is handled
the same way, so one molecule never stops a build.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

Report = Callable[[float], None]  # a job calls it with a size measure (e.g. heavy atoms) to set its budget


@dataclass
class _Slot:
    process: Any  # multiprocessing.Process of the chosen context
    conn: Connection
    index: int | None = None  # job being run
    deadline: float = 0.0  # time.monotonic() after which the job counts as stuck


def _serve(conn: Connection, work: Callable[[Any, Report], Any]) -> None:
    """Worker loop: receive (index, job), send ("size", index, x) when reported and ("done", index, result)."""
    os.environ["OMP_NUM_THREADS"] = "1"  # one process per core: no nested OpenMP threads (tblite)
    while True:
        item = conn.recv()
        if item is None:
            return
        index, job = item
        result = work(job, lambda size, i=index: conn.send(("size", i, size)))
        conn.send(("done", index, result))


def _context(work: Callable) -> multiprocessing.context.BaseContext:
    """forkserver where available: workers start from a clean process that has imported only `work`'s
    module, never from the caller, whose OpenMP runtime (tblite) may already hold threads and would
    deadlock a forked child. The server starts once per process (~2 s) and forks cheaply after that."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([work.__module__])
    return context


def guarded_map(
    work: Callable[[Any, Report], Any],
    jobs: Sequence[Any],
    *,
    workers: int,
    budget_s: Callable[[Any, float], float],
    fallback: Callable[[Any, str], Any],
    initial_budget_s: float = 60.0,
) -> Iterator[Any]:
    """`work(job, report)` for every job in `workers` processes; yields results in job order.

    A job has `initial_budget_s` seconds until it reports a size x, then `budget_s(job, x)` seconds from
    that moment. An overrunning or crashed job's worker is killed and replaced, and `fallback(job, reason)`,
    run in this process, gives its result. `work` must be a module-level function (spawn pickles it).
    """
    context = _context(work)
    queue = deque(range(len(jobs)))
    results: dict[int, Any] = {}

    def start() -> _Slot:
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, work), daemon=True)
        process.start()
        child.close()
        return _Slot(process, parent)

    def assign(slot: _Slot) -> None:
        slot.index = queue.popleft() if queue else None
        if slot.index is not None:
            slot.deadline = time.monotonic() + initial_budget_s
            slot.conn.send((slot.index, jobs[slot.index]))

    def replace(slot: _Slot, reason: str) -> _Slot:  # slot.index is the job that failed
        results[slot.index] = fallback(jobs[slot.index], reason)
        slot.process.kill()
        slot.process.join()
        slot.conn.close()
        fresh = start()
        assign(fresh)
        return fresh

    slots = [start() for _ in range(max(1, min(workers, len(jobs))))]
    try:
        for slot in slots:
            assign(slot)
        done = 0
        while done < len(jobs):
            busy = {slot.conn: slot for slot in slots if slot.index is not None}
            for conn in wait(list(busy), timeout=1.0):
                slot = busy[conn]
                try:
                    kind, index, payload = conn.recv()
                except (EOFError, OSError):
                    slots[slots.index(slot)] = replace(slot, "worker process died")
                    continue
                if kind == "size":
                    slot.deadline = time.monotonic() + budget_s(jobs[index], payload)
                else:
                    results[index] = payload
                    assign(slot)
            now = time.monotonic()
            for i, slot in enumerate(slots):
                if slot.index is not None and now > slot.deadline:
                    slots[i] = replace(slot, "timed out")
            while done in results:
                yield results.pop(done)
                done += 1
    finally:
        for slot in slots:
            with contextlib.suppress(OSError):  # a worker that already died
                slot.conn.send(None)
            slot.process.join(timeout=1)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()

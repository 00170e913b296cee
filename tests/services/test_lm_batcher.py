"""The LM stage's batcher: batches stay open while requests arrive, and every caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from molm3d_services.lm.batcher import Batcher


class Recorder:
    """A model call that records its batches and answers each item with item * 10."""

    def __init__(self, fail_on: int | None = None, seconds: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail_on, self.seconds = fail_on, seconds

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise RuntimeError(f"model failed on a batch holding {self.fail_on}")
        return [i * 10 for i in items]


async def trickle(batcher: Batcher, items: list[int], gap_s: float) -> list[int]:
    async def one(i: int) -> int:
        await asyncio.sleep(i * gap_s)
        return await batcher.submit(i)

    return await asyncio.gather(*(one(i) for i in items))


def test_a_trickling_burst_is_one_batch_and_each_caller_gets_its_answer():
    run = Recorder()
    batcher = Batcher(run, max_batch_size=32, max_wait_s=30, idle_s=0.5)
    assert asyncio.run(trickle(batcher, list(range(12)), gap_s=0.02)) == [i * 10 for i in range(12)]
    assert run.batches == [list(range(12))]


def test_a_lone_request_waits_the_idle_gap_not_the_whole_window():
    run = Recorder()
    batcher = Batcher(run, max_batch_size=32, max_wait_s=60, idle_s=0.05)

    async def lone() -> int:
        return await asyncio.wait_for(batcher.submit(7), timeout=20)  # far below max_wait_s

    assert asyncio.run(lone()) == 70
    assert run.batches == [[7]]


def test_the_window_caps_a_batch_that_keeps_receiving_requests():
    run = Recorder()
    batcher = Batcher(run, max_batch_size=1000, max_wait_s=0.2, idle_s=5)
    assert asyncio.run(trickle(batcher, list(range(20)), gap_s=0.05)) == [i * 10 for i in range(20)]
    assert len(run.batches) >= 2 and sorted(i for b in run.batches for i in b) == list(range(20))


def test_full_batches_close_at_once_and_requests_queued_meanwhile_form_the_next():
    run = Recorder(seconds=0.2)
    batcher = Batcher(run, max_batch_size=4, max_wait_s=60, idle_s=60)

    async def burst() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(10))), timeout=3)

    with pytest.raises(TimeoutError):  # the last 2 never fill a batch, and idle_s is 60 s
        asyncio.run(burst())
    assert run.batches[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_failed_batch_fails_only_the_request_that_fails_alone():
    run = Recorder(fail_on=3)
    batcher = Batcher(run, max_batch_size=4, max_wait_s=30, idle_s=0.1)

    async def two_batches() -> tuple[list, list]:
        first = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
        second = await asyncio.gather(*(batcher.submit(i) for i in range(4, 8)), return_exceptions=True)
        return first, second

    first, second = asyncio.run(two_batches())
    assert first[:3] == [0, 10, 20]  # answered, each on its own after the batch failed
    assert isinstance(first[3], RuntimeError) and "holding 3" in str(first[3])
    assert run.batches[:5] == [[0, 1, 2, 3], [0], [1], [2], [3]]
    assert second == [40, 50, 60, 70] and run.batches[5:] == [[4, 5, 6, 7]]


def test_callers_that_gave_up_are_left_out_of_the_batch():
    run = Recorder(seconds=0.3)
    batcher = Batcher(run, max_batch_size=32, max_wait_s=30, idle_s=0.05)

    async def scenario() -> int:
        first = asyncio.ensure_future(batcher.submit(1))  # occupies the model for 0.3 s
        await asyncio.sleep(0.1)
        impatient = asyncio.ensure_future(batcher.submit(2))
        patient = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0.01)
        impatient.cancel()
        await first
        return await patient

    assert asyncio.run(scenario()) == 30
    assert run.batches == [[1], [3]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch_size=0"):
        Batcher(Recorder(), max_batch_size=0)


def test_a_model_call_that_loses_results_is_rerun_per_request_and_the_next_batch_still_runs():
    calls = []

    async def lossy(items: list[int]) -> list[int]:
        calls.append(items)
        if 9 in items:  # loses results whenever 9 is in the call, even alone
            return []
        return [i * 10 for i in items][: 1 if len(calls) == 1 else None]

    batcher = Batcher(lossy, max_batch_size=2, max_wait_s=30, idle_s=0.1)

    async def batches() -> tuple[list, list, list]:
        first = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        second = await asyncio.gather(batcher.submit(3), batcher.submit(9), return_exceptions=True)
        third = await asyncio.gather(batcher.submit(4), batcher.submit(5), return_exceptions=True)
        return first, second, third

    first, second, third = asyncio.run(batches())
    assert first == [10, 20] and calls[:3] == [[1, 2], [1], [2]]
    assert second[0] == 30 and isinstance(second[1], RuntimeError) and "gave 0 results" in str(second[1])
    assert third == [40, 50]

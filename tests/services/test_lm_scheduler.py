"""The LM stage's scheduler: callers on an event loop, the continuous decoder on its thread (tiny random LM)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from molm3d_core.models import DecodingOptions
from molm3d_core.models.continuous import ContinuousDecoder, Sequence
from molm3d_services.lm.scheduler import DecodeLoop

D = DecodingOptions(max_new_tokens=6, no_repeat_ngram_size=0)


@pytest.fixture(scope="module")
def lm(tiny_model):
    return tiny_model.lm


def sequences(lm, n: int, decoding: DecodingOptions = D) -> list[Sequence]:
    prompts = [f"Question {i}: {'why ' * i}?" for i in range(n)]
    return [Sequence(e, decoding) for e in lm.prompt_embeds(prompts, None)]


def alone(lm, seq: Sequence):
    decoder = ContinuousDecoder(lm, 1)
    decoder.add([seq])
    while decoder.running:
        decoder.step()
    return lm.generation(seq)


def test_concurrent_callers_each_get_their_sequence_decoded_as_if_alone(lm):
    refs = [alone(lm, s) for s in sequences(lm, 5)]
    loop = DecodeLoop(ContinuousDecoder(lm, max_batch_size=2), max_prefill=1)

    async def run():
        return await asyncio.gather(*(loop.submit(s) for s in sequences(lm, 5)))

    assert [lm.generation(s) for s in asyncio.run(run())] == refs
    snapshot = loop.load()
    assert snapshot["slots"] == 2 and snapshot["running"] == [] and snapshot["waiting"] == 0
    assert snapshot["step_s"] and set(snapshot["step_s"]) <= {1, 2} and snapshot["prefill_s"] > 0
    assert len(snapshot["lengths"]) == 5
    loop.close()


def test_a_sequence_that_fails_its_prefill_fails_alone(lm):
    loop = DecodeLoop(ContinuousDecoder(lm, max_batch_size=4), max_prefill=4)
    good = sequences(lm, 2)
    bad = Sequence(torch.zeros(3, lm.hidden_size + 1), D)  # wrong width: the model call fails

    async def run():
        return await asyncio.gather(*(loop.submit(s) for s in [good[0], bad, good[1]]), return_exceptions=True)

    first, failed, second = asyncio.run(run())
    assert first is good[0] and second is good[1] and first.finish_reason in ("eos", "length")
    assert isinstance(failed, RuntimeError)
    loop.close()


def test_a_caller_that_gives_up_takes_its_sequence_out_of_the_batch(lm):
    loop = DecodeLoop(ContinuousDecoder(lm, max_batch_size=2))
    slow, quick = sequences(lm, 2, DecodingOptions(max_new_tokens=400, no_repeat_ngram_size=0))
    quick.decoding = D

    async def run():
        task = asyncio.ensure_future(loop.submit(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        await loop.submit(quick)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert slow.finish_reason == "cancelled" and len(slow.tokens) < 400
    loop.close()

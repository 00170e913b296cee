"""The continuous decoder on the real packaged SmolLM2: the tokens of transformers' greedy generate,
whatever joins or leaves the batch around a sequence."""

from __future__ import annotations

import pytest
import torch

from molm3d_core.decoding import default_decoding
from molm3d_core.models import DecodingOptions
from molm3d_core.models.continuous import ContinuousDecoder, Sequence

QUESTIONS = ["Say hello.", "Name three noble gases.", "Write a long story about a molecule of water, please."]


@pytest.fixture(scope="module")
def lm(small_model):
    return small_model[0].lm


def chats(lm, questions=QUESTIONS):
    return [
        lm.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def transformers_greedy(lm, prompt: str, d: DecodingOptions) -> list[int]:
    """transformers' own greedy search on one prompt given as embeddings, as the LM was used before."""
    batch = lm.tokenize([prompt])
    with torch.no_grad():
        out = lm.model.generate(
            inputs_embeds=lm.embed(batch.input_ids, None),
            attention_mask=batch.attention_mask,
            max_new_tokens=d.max_new_tokens,
            repetition_penalty=d.repetition_penalty,
            no_repeat_ngram_size=d.no_repeat_ngram_size,
            do_sample=False,
            eos_token_id=lm.tokenizer.eos_token_id,
            pad_token_id=lm.tokenizer.pad_token_id,
            suppress_tokens=[lm.mol_token_id],
        )
    row = out[0].tolist()
    eos = lm.tokenizer.eos_token_id
    return row[: row.index(eos) + 1] if eos in row else row


@pytest.mark.parametrize(
    "decoding",
    [
        DecodingOptions(max_new_tokens=20, no_repeat_ngram_size=0),
        default_decoding("caption", max_new_tokens=20),
        DecodingOptions(max_new_tokens=20, repetition_penalty=1.6, no_repeat_ngram_size=2),
    ],
    ids=["plain", "caption-default", "strong-penalties"],
)
def test_a_sequence_decodes_to_the_tokens_of_transformers_greedy_search(lm, decoding):
    prompts = chats(lm)
    embeds = lm.prompt_embeds(prompts, None)
    decoder = ContinuousDecoder(lm, max_batch_size=4)
    seqs = [Sequence(e, decoding) for e in embeds]
    decoder.add(seqs)
    while decoder.running:
        decoder.step()
    for prompt, seq in zip(prompts, seqs, strict=True):
        assert seq.tokens == transformers_greedy(lm, prompt, decoding)


def test_sequences_that_join_late_or_leave_early_do_not_change_the_others(lm):
    d = DecodingOptions(max_new_tokens=24)
    prompts = chats(lm)
    alone = [lm.generate([p], None, d)[0] for p in prompts]
    embeds = lm.prompt_embeds(prompts, None)
    decoder = ContinuousDecoder(lm, max_batch_size=2)
    seqs = [Sequence(e, d) for e in embeds]
    waiting, steps, joined_at = list(seqs), 0, {}
    short = Sequence(embeds[0], DecodingOptions(max_new_tokens=3))  # leaves after 3 tokens, freeing its slot
    decoder.add([short])
    while waiting or decoder.running:
        if waiting and decoder.free_slots:
            joined_at[id(waiting[0])] = steps
            decoder.add([waiting.pop(0)])
        decoder.step()
        steps += 1
    assert len(short.tokens) == 3 and short.finish_reason == "length"
    assert [lm.generation(s) for s in seqs] == alone
    # two slots: the third prompt joined as soon as one of the first ones ended, not after both had
    assert joined_at[id(seqs[1])] < joined_at[id(seqs[2])] < steps - 1
    assert decoder._cache is None and not decoder.running  # nothing is kept once the batch is empty


def test_a_cancelled_sequence_leaves_before_the_next_step(lm):
    d = DecodingOptions(max_new_tokens=10, no_repeat_ngram_size=0)
    prompts = chats(lm, QUESTIONS[1:])
    alone = lm.generate([prompts[1]], None, d)[0]
    decoder = ContinuousDecoder(lm, max_batch_size=2)
    gone, kept = (Sequence(e, d) for e in lm.prompt_embeds(prompts, None))
    decoder.add([gone, kept])
    decoder.step()
    gone.cancel()
    finished = decoder.step()
    assert gone in finished and gone.finish_reason == "cancelled" and len(gone.tokens) == 2
    assert decoder.running == [kept]
    while decoder.running:
        decoder.step()
    assert lm.generation(kept) == alone


def test_more_sequences_than_free_slots_are_refused(lm):
    decoder = ContinuousDecoder(lm, max_batch_size=1)
    embeds = lm.prompt_embeds(chats(lm, QUESTIONS[:2]), None)
    with pytest.raises(ValueError, match="2 sequences do not fit the 1 free slots"):
        decoder.add([Sequence(e, DecodingOptions()) for e in embeds])

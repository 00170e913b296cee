"""The continuous decoder on the real packaged SmolLM2: the tokens of transformers' greedy generate,
whatever joins or leaves the batch around a sequence."""

from __future__ import annotations

import pytest
import torch

from molm3d_core.decoding import default_decoding, find_stop, stop_safe_prefix
from molm3d_core.models import DecodingOptions
from molm3d_core.models.continuous import ContinuousDecoder, Sequence, sampling_probs

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


# -- sampling -------------------------------------------------------------------------------------------


def decode(lm, seqs):
    decoder = ContinuousDecoder(lm, max_batch_size=max(1, len(seqs)))
    decoder.add(seqs)
    while decoder.running:
        decoder.step()
    return [s.tokens for s in seqs]


def test_a_seeded_sample_is_the_same_alone_again_and_in_a_batch_joined_late(lm):
    d = DecodingOptions(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=1234, no_repeat_ngram_size=0)
    embeds = lm.prompt_embeds(chats(lm), None)
    (alone,) = decode(lm, [Sequence(embeds[2], d)])
    (again,) = decode(lm, [Sequence(embeds[2], d)])
    assert alone == again and len(alone) > 4
    # In a batch: other sampled and greedy sequences around it, it joins at step 3, others later.
    decoder = ContinuousDecoder(lm, max_batch_size=4)
    others = [
        Sequence(embeds[0], DecodingOptions(max_new_tokens=6, temperature=1.5, seed=7)),
        Sequence(embeds[1], DecodingOptions(max_new_tokens=20)),
    ]
    target = Sequence(embeds[2], d)
    late = Sequence(embeds[0], DecodingOptions(max_new_tokens=20, temperature=1.0))  # a random seed
    decoder.add(others)
    for step in range(40):
        if step == 3:
            decoder.add([target])
        if step == 5:
            decoder.add([late])
        if not decoder.running:
            break
        decoder.step()
    assert target.tokens == alone
    # not greedy in disguise: the greedy answer differs
    (greedy,) = decode(lm, [Sequence(embeds[2], DecodingOptions(max_new_tokens=16, no_repeat_ngram_size=0))])
    assert greedy != alone


def test_a_retried_prefill_draws_the_same_tokens(lm):
    # the LM stage's scheduler clears a sequence's tokens and prefills it again when its batch failed
    (embeds,) = lm.prompt_embeds(chats(lm, QUESTIONS[2:]), None)
    seq = Sequence(embeds, DecodingOptions(max_new_tokens=8, temperature=1.2))  # no seed: a random one
    (first,) = decode(lm, [seq])
    seq.tokens.clear()
    seq._ngrams.clear()
    seq.finish_reason = None
    (second,) = decode(lm, [seq])
    assert first == second


def test_seeds_give_different_samples(tiny_model):
    lm = tiny_model.lm
    prompt = tiny_model.prompt("Describe the input molecule.", [])
    (embeds,) = lm.prompt_embeds([prompt], None)
    runs = [
        decode(lm, [Sequence(embeds, DecodingOptions(max_new_tokens=6, temperature=2.0, seed=seed))])[0]
        for seed in (0, 1, 2, 3)
    ]
    assert len({tuple(r) for r in runs}) == 4


def test_tiny_top_p_and_zero_temperature_decode_greedily(lm):
    embeds = lm.prompt_embeds(chats(lm), None)
    greedy = decode(lm, [Sequence(e, DecodingOptions(max_new_tokens=12)) for e in embeds])
    nucleus_of_one = DecodingOptions(max_new_tokens=12, temperature=1.5, top_p=1e-6, seed=3)
    assert decode(lm, [Sequence(e, nucleus_of_one) for e in embeds]) == greedy
    zero = DecodingOptions(max_new_tokens=12, temperature=0.0, top_p=0.3, seed=3)  # top_p, seed: unused
    assert decode(lm, [Sequence(e, zero) for e in embeds]) == greedy


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5), (2.0, 0.05)])
def test_sampling_distribution_is_transformers_temperature_then_top_p(temperature, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    scores[:, 7] = -torch.inf  # a suppressed token
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores.clone()))
    ours = sampling_probs(scores, temperature, top_p)
    torch.testing.assert_close(ours, warped.softmax(-1))
    assert (ours[:, 7] == 0).all() and ((ours > 0).sum(-1) >= 1).all()


# -- stop strings ---------------------------------------------------------------------------------------


def test_a_stop_string_ends_the_sequence_and_the_text_before_it(lm):
    prompt = chats(lm, QUESTIONS[2:])
    (plain,) = lm.generate(prompt, None, DecodingOptions(max_new_tokens=30))
    words = plain.text.split()
    assert len(words) > 6
    stop = " " + words[4]  # from the greedy answer itself: the test cannot pass vacuously
    cut = plain.text.index(stop)
    (embeds,) = lm.prompt_embeds(prompt, None)
    seq = Sequence(embeds, DecodingOptions(max_new_tokens=30, stop=("never in this text", stop)))
    (tokens,) = decode(lm, [seq])
    g = lm.generation(seq)
    assert seq.finish_reason == g.finish_reason == "stop"
    assert g.text == plain.text[:cut].strip() and stop not in g.text
    assert g.num_tokens == len(tokens) < plain.num_tokens
    # it ended at the first token whose text holds the stop string
    assert stop in lm.answer_text(tokens) and stop not in lm.answer_text(tokens[:-1])
    # the public path gives the same, and stop strings that never occur change nothing
    assert lm.generate(prompt, None, DecodingOptions(max_new_tokens=30, stop=[stop])) == [g]
    assert lm.generate(prompt, None, DecodingOptions(max_new_tokens=30, stop="\x07never")) == [plain]


def test_streamed_prefixes_never_take_back_text(lm):
    # what the LM stage may send while a stop string is still forming: always a prefix of the final text
    prompt = chats(lm, QUESTIONS[2:])
    (plain,) = lm.generate(prompt, None, DecodingOptions(max_new_tokens=30))
    stop = (max(plain.text.split(), key=len).rstrip(".,"), "xyz")  # a word of several tokens: it forms
    (embeds,) = lm.prompt_embeds(prompt, None)
    seq = Sequence(embeds, DecodingOptions(max_new_tokens=30, stop=stop))
    (tokens,) = decode(lm, [seq])
    final = lm.generation(seq).text
    held_back = 0  # texts without a stop string of which a tail was held back
    for n in range(len(tokens) + 1):
        text = lm.answer_text(tokens[:n]).strip()
        safe = stop_safe_prefix(text, stop).rstrip()
        assert final.startswith(safe)
        held_back += safe != text and find_stop(text, stop) < 0
    assert seq.finish_reason == "stop" and held_back > 0


def test_beam_search_applies_stop_strings_after_the_fact(lm):
    prompt = chats(lm, QUESTIONS[2:])
    beams = DecodingOptions(max_new_tokens=20, num_beams=2)
    (plain,) = lm.generate(prompt, None, beams)
    stop = " " + plain.text.split()[4]
    (g,) = lm.generate(prompt, None, DecodingOptions(max_new_tokens=20, num_beams=2, stop=[stop]))
    assert g.finish_reason == "stop" and g.text == plain.text[: plain.text.index(stop)].strip()
    assert g.num_tokens == plain.num_tokens  # the beams ran to their end

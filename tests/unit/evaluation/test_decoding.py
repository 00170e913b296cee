"""DecodingOptions.no_repeat_ngram_size: refused when invalid, and it blocks repeated n-grams in generation."""

from __future__ import annotations

import itertools

import pytest
import torch

from molm3d_core.evaluation.text import repeats_ngram
from molm3d_core.models import DecodingOptions
from molm3d_core.models.continuous import Sequence, decode_all

WORDS = [" acid", " ring", " the", " is", " salt", " base", " group", " compound", " ion", " ester", " amine", " oxide"]


@pytest.mark.parametrize("size", [-1, 1.5, True, "3", None])
def test_bad_no_repeat_ngram_sizes_are_refused(size):
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        DecodingOptions(no_repeat_ngram_size=size)


@pytest.mark.parametrize("penalty", [0.0, -1.2, float("nan")])
def test_bad_repetition_penalties_are_refused(penalty):
    with pytest.raises(ValueError, match="repetition_penalty"):
        DecodingOptions(repetition_penalty=penalty)


def test_default_blocks_repeated_4_grams_and_valid_sizes_pass():
    # the winner of the model card's caption decoding comparison; 0 turns the blocking off
    assert DecodingOptions().no_repeat_ngram_size == 4
    assert DecodingOptions(no_repeat_ngram_size=0).no_repeat_ngram_size == 0
    assert DecodingOptions(no_repeat_ngram_size=3).no_repeat_ngram_size == 3


def _bigrams(ids: list[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(ids))


@pytest.mark.filterwarnings("ignore:Passing `no_repeat_ngram_size` with `inputs_embeds`")
def test_no_repeat_ngram_blocks_a_loop_of_the_tiny_lm(tiny_model):
    lm = tiny_model.lm
    ids = [lm.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in WORDS]
    # A fixed preference over these words on top of the random LM's logits: greedy decoding then
    # loops on the first word, unless n-grams may not repeat.
    bias = torch.zeros(lm.model.get_output_embeddings().weight.shape[0])
    bias[ids] = 1000.0 * torch.arange(len(ids), 0, -1, dtype=torch.float32)
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: out + bias.to(out.dtype))
    prompt = [tiny_model.prompt("Describe the input molecule.", "CCO")]
    mol = torch.zeros(1, tiny_model.num_query_tokens, lm.hidden_size)
    try:
        runs = {}
        for size in (0, 2):
            (embeds,) = lm.prompt_embeds(prompt, mol)
            seq = Sequence(embeds, DecodingOptions(max_new_tokens=16, no_repeat_ngram_size=size))
            (gen,) = decode_all(lm, [seq])
            runs[size] = (seq.tokens, gen.text)
    finally:
        hook.remove()
    looping, looping_text = runs[0]
    blocked, blocked_text = runs[2]
    assert len(set(_bigrams(looping))) < len(_bigrams(looping))  # without the option: repeated bigrams
    assert len(set(_bigrams(blocked))) == len(_bigrams(blocked)) == 15  # with it: every bigram once
    assert repeats_ngram(looping_text.split()) and not repeats_ngram(blocked_text.split())

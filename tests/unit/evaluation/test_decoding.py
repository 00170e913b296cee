"""DecodingOptions: every field refused when invalid (sampling and stop strings included), the stop-string
helpers, the seeds, and no_repeat_ngram_size blocking repeated n-grams in generation."""

from __future__ import annotations

import itertools

import pytest
import torch

from molm3d_core.decoding import cut_at_stop, find_stop, step_seed, stop_safe_prefix
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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, r"^temperature must be in 0\.\.2 \(0: greedy\), got -0\.1$"),
        ({"temperature": 2.01}, "^temperature must be in 0..2"),
        ({"temperature": float("nan")}, "^temperature must be in 0..2"),
        ({"temperature": float("inf")}, "^temperature must be in 0..2"),
        ({"temperature": "1"}, "^temperature must be a number"),
        ({"temperature": True}, "^temperature must be a number"),
        ({"top_p": 0.0}, r"^top_p must be in \(0, 1\] \(1: off\), got 0\.0$"),
        ({"top_p": 1.5}, r"^top_p must be in \(0, 1\]"),
        ({"top_p": float("nan")}, r"^top_p must be in \(0, 1\]"),
        ({"seed": 1.0}, "^seed must be an integer"),
        ({"seed": 2**63}, "^seed must be a 64-bit signed integer"),
        ({"seed": -(2**63) - 1}, "^seed must be a 64-bit signed integer"),
        ({"temperature": 0.7, "num_beams": 3}, "^temperature > 0 samples and needs num_beams 1; .* num_beams 3$"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "^stop has 5 strings; the limit is 4$"),
        ({"stop": ["ok", ""]}, r"^stop\[1\] must have 1\.\.64 characters, got 0$"),
        ({"stop": ["x" * 65]}, r"^stop\[0\] must have 1\.\.64 characters, got 65$"),
        ({"stop": ["ok", 3]}, "^stop must be a list of strings"),
        ({"stop": None}, "^stop must be a list of strings"),
    ],
)
def test_bad_sampling_and_stop_options_are_refused_with_the_field_first(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodingOptions(**kwargs)


def test_valid_sampling_and_stop_options_pass():
    d = DecodingOptions(temperature=2, top_p=1e-6, seed=-(2**63), stop=["\n\n", "x" * 64, "a", "b"])
    assert d.sampling and d.stop == ("\n\n", "x" * 64, "a", "b")
    assert DecodingOptions(stop="END").stop == ("END",)  # OpenAI's single string
    greedy = DecodingOptions(num_beams=4, top_p=0.5, seed=1)  # top_p and seed without sampling: unused
    assert not greedy.sampling and DecodingOptions().stop == () and DecodingOptions().seed is None


@pytest.mark.parametrize(
    ("text", "stop", "safe"),
    [
        ("The answer is 42", ("\n",), "The answer is 42"),
        ("The answer is 42.\nQues", ("\nQuestion:",), "The answer is 42."),  # a stop string forming
        ("The answer is 42.\n", ("\nQuestion:",), "The answer is 42."),
        ("The answer is 42.\nQuestion: next", ("\nQuestion:",), "The answer is 42."),  # one complete
        ("ab END cd EN", ("END",), "ab "),  # cut at the first complete one, whatever follows
        ("abc", ("cd", "bcx"), "a"),  # the longest partial match of any stop string is held
        ("abc", ("x", "y"), "abc"),
        ("", ("END",), ""),
        ("aaa", ("aab",), "a"),
    ],
)
def test_stop_safe_prefix_holds_back_what_may_become_a_stop_string(text, stop, safe):
    assert stop_safe_prefix(text, stop) == safe


def test_find_and_cut_at_the_earliest_stop_string():
    assert find_stop("one two three", ("three", "two")) == 4
    assert cut_at_stop("one two three", ("three", "two")) == "one "
    assert find_stop("one", ("x",)) == -1 and cut_at_stop("one", ("x",)) is None
    assert cut_at_stop("two", ("two",)) == ""


def test_seeds_mix_every_bit():
    # torch's CPU generator reads only 32 bits of a seed: seeds differing above them must still differ
    assert step_seed(0, 0) & 0xFFFFFFFF != step_seed(2**32, 0) & 0xFFFFFFFF
    assert len({step_seed(7, k) for k in range(1000)}) == 1000
    assert all(0 <= step_seed(s, 3) < 2**64 for s in (-(2**63), -1, 0, 2**63 - 1))


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

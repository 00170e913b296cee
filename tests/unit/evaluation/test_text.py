"""BLEU, METEOR and ROUGE on hand-made corpora whose values are computed by hand in the comments."""

from __future__ import annotations

import math

import pytest

from molm3d_core.evaluation import repetition_share, simple_tokenize, text_metrics


def test_identical_texts_score_100_except_meteor_fragmentation():
    scores = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert scores.bleu2 == pytest.approx(100.0)
    assert scores.bleu4 == pytest.approx(100.0)
    assert scores.rouge1 == scores.rouge2 == scores.rougeL == pytest.approx(100.0)
    # METEOR: one chunk over 6 matches -> penalty 0.5 * (1/6)^3.
    assert scores.meteor == pytest.approx(100.0 * (1 - 0.5 / 6**3))


def test_disjoint_texts_score_zero():
    scores = text_metrics(["alpha beta gamma"], ["one two three"])
    for value in (scores.bleu2, scores.bleu4, scores.meteor, scores.rouge1, scores.rouge2, scores.rougeL):
        assert value == pytest.approx(0.0, abs=1e-9)


def test_corpus_bleu_pools_ngram_counts_over_the_corpus():
    # Pair 1: hyp "the cat sat on the mat" vs ref "the cat is on the mat".
    #   1-grams 5/6 (all but "sat"); 2-grams 3/5 (the cat, on the, the mat); 3-grams 1/4 (on the mat); 4-grams 0/3.
    # Pair 2: identical "a b c d": 4/4, 3/3, 2/2, 1/1. Lengths equal -> brevity penalty 1.
    # Corpus precisions: 9/10, 6/8, 3/6, 1/4.
    scores = text_metrics(["the cat sat on the mat", "a b c d"], ["the cat is on the mat", "a b c d"])
    assert scores.bleu2 == pytest.approx(100 * math.sqrt(0.9 * 0.75))  # 82.16
    assert scores.bleu4 == pytest.approx(100 * (0.9 * 0.75 * 0.5 * 0.25) ** 0.25)  # 53.90
    assert scores.n == 2


def test_bleu_brevity_penalty():
    # hyp "the cat" vs ref "the cat sat": precisions 1 and 1, BP = exp(1 - 3/2).
    assert text_metrics(["the cat"], ["the cat sat"]).bleu2 == pytest.approx(100 * math.exp(-0.5))


def test_rouge_f1_by_hand():
    # pred "the cat sat" vs ref "the cat is here":
    # ROUGE-1: overlap 2, P 2/3, R 2/4 -> F1 4/7; ROUGE-2: "the cat" only, P 1/2, R 1/3 -> F1 2/5;
    # ROUGE-L: LCS "the cat" = 2 -> 4/7.
    scores = text_metrics(["the cat sat"], ["the cat is here"])
    assert scores.rouge1 == pytest.approx(100 * 4 / 7)
    assert scores.rouge2 == pytest.approx(40.0)
    assert scores.rougeL == pytest.approx(100 * 4 / 7)


def test_rouge_is_averaged_per_pair_not_pooled():
    scores = text_metrics(["a b", "x y"], ["a b", "p q"])
    assert scores.rouge1 == pytest.approx(50.0)


def test_meteor_uses_wordnet_synonyms_and_says_so():
    # "auto" and "car" share WordNet's car.n.01: 3 matches in one chunk -> 1 - 0.5 * (1/3)^3.
    full = text_metrics(["the auto stopped"], ["the car stopped"])
    assert full.meteor_synonyms
    assert full.meteor == pytest.approx(100 * (1 - 0.5 / 27))
    assert "meteor" in full.as_dict() and "WordNet 3.0" in full.note


def test_meteor_without_synonyms_is_named_differently():
    # Exact matches "the", "stopped": P = R = 2/3, two chunks over two matches -> penalty 0.5 -> 1/3.
    partial = text_metrics(["the auto stopped"], ["the car stopped"], meteor_synonyms=False)
    assert not partial.meteor_synonyms
    assert partial.meteor == pytest.approx(100 / 3)
    assert "meteor" not in partial.as_dict()
    assert partial.as_dict()["meteor_exact_stem"] == pytest.approx(100 / 3)
    assert "no WordNet synonyms" in partial.note


def test_meteor_stem_stage_matches_inflections_without_wordnet():
    # "cats"/"cat" share the Porter stem: 2 matches in one chunk -> 1 - 0.5 * (1/2)^3.
    scores = text_metrics(["black cats"], ["black cat"], meteor_synonyms=False)
    assert scores.meteor == pytest.approx(100 * (1 - 0.5 / 8))


def test_custom_tokenizer_is_used_for_bleu():
    # Character tokens "abc" vs "abd": 1-grams 2/3, 2-grams 1/2 -> BLEU-2 sqrt(1/3); as words it would be 0.
    scores = text_metrics(["abc"], ["abd"], tokenize=list)
    assert scores.bleu2 == pytest.approx(100 * math.sqrt(1 / 3))


def test_simple_tokenize_lowercases_and_splits_punctuation():
    assert simple_tokenize("A C-H bond.") == ["a", "c", "-", "h", "bond", "."]


def test_mismatched_or_empty_inputs_raise():
    with pytest.raises(ValueError):
        text_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        text_metrics([], [])


def test_repetition_counts_a_looping_text_and_not_a_normal_one():
    from molm3d_core.evaluation.text import repeats_ngram

    loop = "The molecule is a carboxylic acid. It is a carboxylic acid. It is a carboxylic acid."
    normal = "The molecule is a carboxylic acid. It is a conjugate acid of an acetate and a metabolite."
    twice = "It is a carboxylic acid. It is a carboxylic acid, a metabolite."  # a 4-gram twice: not a loop yet
    assert repeats_ngram(simple_tokenize(loop)) and not repeats_ngram(simple_tokenize(normal))
    assert not repeats_ngram(simple_tokenize(twice))
    assert repeats_ngram(["x"] * 6) and not repeats_ngram(["x"] * 5)  # overlapping occurrences count: 3 vs 2
    assert repetition_share([loop, normal, twice, loop]) == pytest.approx(50.0)
    scores = text_metrics([loop, normal], [normal, normal])
    assert scores.repeat4 == pytest.approx(50.0) and scores.as_dict()["repeat4"] == pytest.approx(50.0)
    assert math.isnan(repetition_share([]))

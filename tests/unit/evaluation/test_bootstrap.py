"""Bootstrap intervals: they hold the point estimate, narrow with more examples, repeat for a seed,
resample corpus BLEU exactly as nltk computes it, and travel through the report."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from molm3d_core.evaluation import (
    SECTION_DFT,
    Bootstrap,
    EvaluationReport,
    mean_baseline,
    property_mae,
    text_metrics,
    value_scores,
)
from molm3d_core.evaluation.text import bleu, bleu_from_statistics, bleu_statistics


def _answers(n: int, seed: int = 0) -> tuple[list[str], list[float]]:
    """Answers off by |N(0, 0.3)| eV, every tenth one unparseable."""
    rng = np.random.default_rng(seed)
    labels = rng.normal(-6.5, 0.5, n)
    answers = [
        f"{y + e:.3f} eV" if i % 10 else "no idea"
        for i, (y, e) in enumerate(zip(labels, rng.normal(0, 0.3, n), strict=True))
    ]
    return answers, labels.tolist()


def _width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_property_intervals_hold_the_estimate_and_narrow_with_more_examples():
    small = property_mae("homo", *_answers(30), bootstrap=Bootstrap())
    large = property_mae("homo", *_answers(3000), bootstrap=Bootstrap())
    for scores in (small, large):
        for metric in ("mae", "valid_ratio"):
            low, high = scores.intervals[metric]
            assert low < getattr(scores, metric) < high
    assert _width(large.intervals["mae"]) < 0.3 * _width(small.intervals["mae"])  # ~ 1/sqrt(100)
    assert _width(large.intervals["valid_ratio"]) < 0.3 * _width(small.intervals["valid_ratio"])
    # The interval is of the MAE over valid answers: 0.3 * sqrt(2/pi) = 0.24 eV.
    assert large.intervals["mae"][0] < 0.24 < large.intervals["mae"][1]


def test_intervals_are_deterministic_for_a_seed_and_change_with_it():
    answers, labels = _answers(50)
    first = property_mae("homo", answers, labels, bootstrap=Bootstrap(seed=3))
    again = property_mae("homo", answers, labels, bootstrap=Bootstrap(seed=3))
    other = property_mae("homo", answers, labels, bootstrap=Bootstrap(seed=4))
    assert first.intervals == again.intervals
    assert first.intervals["mae"] != other.intervals["mae"]
    # The point estimate does not depend on the bootstrap.
    assert (
        first.mae == property_mae("homo", answers, labels).mae and not property_mae("homo", answers, labels).intervals
    )


def test_bootstrap_counts_are_resamples_with_replacement():
    counts = Bootstrap(resamples=200, seed=1).counts(7)
    assert counts.shape == (200, 7) and (counts.sum(1) == 7).all()
    assert (counts == 0).any() and (counts >= 2).any()  # some examples left out, some drawn twice
    with pytest.raises(ValueError):
        Bootstrap(resamples=0)
    with pytest.raises(ValueError):
        Bootstrap(confidence=1.0)


def test_head_and_mean_baseline_scores_get_intervals():
    labels = list(np.linspace(40, 90, 40))
    heads = value_scores("mw", [y + (3 if i % 2 else -1) for i, y in enumerate(labels)], labels, bootstrap=Bootstrap())
    assert heads.mae == pytest.approx(2.0) and heads.valid_ratio == 1.0
    assert heads.intervals["mae"][0] < 2.0 < heads.intervals["mae"][1]
    # Out of range (mw must be > 0) or not finite counts as invalid, as a generated answer would.
    assert value_scores("mw", [-5.0, float("nan"), 50.0], [1.0, 1.0, 49.0]).valid_ratio == pytest.approx(1 / 3)
    baseline = mean_baseline([60.0, 70.0], labels, "mw", bootstrap=Bootstrap())
    assert baseline.intervals["mae"][0] < baseline.mae < baseline.intervals["mae"][1]


def _corpus(n: int, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(seed)
    words = ["the", "a", "acid", "is", "an", "of", "compound", "ring", "with", "group", "base", "salt"]
    refs = [[rng.choice(words) for _ in range(rng.randint(3, 12))] for _ in range(n)]
    hyps = [[w if rng.random() < 0.6 else rng.choice(words) for w in r[: rng.randint(1, len(r) + 3)]] for r in refs]
    return hyps, refs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_sufficient_statistics_reproduce_nltk_corpus_bleu(seed):
    hyps, refs = _corpus(25, seed)
    hyps.append(["x"])  # no match at all, shorter than the reference: brevity penalty and zero counts
    refs.append(["the", "acid"])
    for order in (2, 4):
        stats = bleu_statistics(hyps, refs, order)
        assert bleu_from_statistics(stats.sum(0), order) == pytest.approx(bleu(hyps, refs, order), rel=1e-9)
    # No 4-gram matches anywhere: nltk's smallest-float precision, i.e. ~0, reproduced.
    short = [["a", "b"], ["c", "d", "e"]]
    stats = bleu_statistics(short, short, 4)
    assert bleu_from_statistics(stats.sum(0), 4) == pytest.approx(bleu(short, short, 4), abs=1e-12)


def test_text_intervals_hold_the_estimate_and_narrow():
    def scores(n):
        hyps, refs = _corpus(n, 7)
        return text_metrics([" ".join(h) for h in hyps], [" ".join(r) for r in refs], meteor_synonyms=False,
                            bootstrap=Bootstrap(resamples=300))  # fmt: skip

    small, large = scores(20), scores(400)
    for metric in ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor_exact_stem"):
        value = small.as_dict()[metric]
        low, high = small.intervals[metric]
        assert low <= value <= high and low < high, metric
        assert _width(large.intervals[metric]) < _width(small.intervals[metric]), metric
    assert {"repeat4_ci_low", "bleu2_ci_low", "bleu2_ci_high", "rougeL_ci_low", "rougeL_ci_high"} <= set(
        small.as_dict()
    )
    assert not any(k.endswith("_ci_low") for k in text_metrics(["a b"], ["a b"]).as_dict())  # no bootstrap: none


def test_report_shows_intervals_in_the_cell_and_keeps_them_in_json():
    report = EvaluationReport(title="t")
    report.add(SECTION_DFT, "homo", {"mae": 0.2431, "mae_ci_low": 0.2312, "mae_ci_high": 0.2559, "n": 100})
    report.add(SECTION_DFT, "lumo", {"mae": float("nan"), "mae_ci_low": float("nan"), "mae_ci_high": float("nan")})
    report.add(SECTION_DFT, "gap", {"mae": 1.5, "n": 3})  # no interval: the plain value
    text = report.to_markdown(decimals=3)
    assert "| task | mae | n |" in text  # the bounds get no columns of their own
    assert "| homo | 0.243 [0.231, 0.256] | 100 |" in text
    assert "| lumo | n/a [n/a, n/a] | - |" in text
    assert "| gap | 1.500 | 3 |" in text
    data = json.loads(report.to_json())
    row = data["sections"][0]["rows"]["homo"]
    assert row["mae_ci_low"] == 0.2312 and row["mae_ci_high"] == 0.2559
    assert data["sections"][0]["rows"]["lumo"]["mae_ci_low"] is None
    assert EvaluationReport.from_dict(data).to_markdown(decimals=3) == text

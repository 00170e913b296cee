"""Evaluation metrics of the reference protocol: text, property QA, retrieval, and the report."""

from .bootstrap import Bootstrap
from .properties import (
    ANY_NUMBER_PATTERN,
    PROPERTY_RANGES,
    PROPERTY_TASKS,
    REFERENCE_NUMBER_PATTERN,
    PropertyScores,
    ValidRange,
    mean_baseline,
    parse_answer,
    property_mae,
    value_scores,
)
from .report import (
    SECTION_CONFORMER,
    SECTION_DFT,
    SECTION_HEADS_CONFORMER,
    SECTION_HEADS_DFT,
    SECTION_SMILES_ONLY,
    SECTION_TRAIN_MEAN,
    EvaluationReport,
    Section,
)
from .retrieval import (
    RetrievalScores,
    evaluate_retrieval,
    reranked_retrieval_scores,
    retrieval_scores,
)
from .text import TextScores, repetition_share, simple_tokenize, text_metrics
from .wordnet import WordNetUnavailable, load_wordnet, wordnet_available

__all__ = [
    "ANY_NUMBER_PATTERN",
    "PROPERTY_RANGES",
    "PROPERTY_TASKS",
    "REFERENCE_NUMBER_PATTERN",
    "SECTION_CONFORMER",
    "SECTION_DFT",
    "SECTION_HEADS_CONFORMER",
    "SECTION_HEADS_DFT",
    "SECTION_SMILES_ONLY",
    "SECTION_TRAIN_MEAN",
    "Bootstrap",
    "EvaluationReport",
    "PropertyScores",
    "RetrievalScores",
    "Section",
    "TextScores",
    "ValidRange",
    "WordNetUnavailable",
    "evaluate_retrieval",
    "load_wordnet",
    "mean_baseline",
    "parse_answer",
    "property_mae",
    "repetition_share",
    "reranked_retrieval_scores",
    "retrieval_scores",
    "simple_tokenize",
    "text_metrics",
    "value_scores",
    "wordnet_available",
]

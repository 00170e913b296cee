"""Evaluation metrics of the reference protocol: text, property QA, retrieval, and the report."""

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
)
from .report import (
    SECTION_CONFORMER,
    SECTION_DFT,
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
from .text import TextScores, simple_tokenize, text_metrics
from .wordnet import WordNetUnavailable, load_wordnet, wordnet_available

__all__ = [
    "ANY_NUMBER_PATTERN",
    "PROPERTY_RANGES",
    "PROPERTY_TASKS",
    "REFERENCE_NUMBER_PATTERN",
    "SECTION_CONFORMER",
    "SECTION_DFT",
    "SECTION_SMILES_ONLY",
    "SECTION_TRAIN_MEAN",
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
    "reranked_retrieval_scores",
    "retrieval_scores",
    "simple_tokenize",
    "text_metrics",
    "wordnet_available",
]

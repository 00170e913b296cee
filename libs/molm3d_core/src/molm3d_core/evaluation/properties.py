"""Property-QA metrics: the reference's "first decimal number, kept only inside a sane range" rule.

An answer is *valid* when the first match of `-?\\d+\\.\\d+` in it exists and lies inside the task's
range; the MAE is over valid answers only and the valid ratio is valid / all answers. Consequences
of the reference regex, kept on purpose so numbers compare with the paper:
- an integer without a decimal point ("MW is 180 g/mol") does not match and the answer is invalid,
  unless a decimal number appears later in it (then that one is taken);
- "1.5e-3" reads as 1.5; "+2.0" reads as 2.0; "- 5.1" (space after the sign) reads as 5.1.
Answer formats for training must therefore always print decimals (e.g. "{:.2f}"). `ANY_NUMBER_PATTERN`
also accepts integers for analyses outside the reference protocol.

Units are those of the answers and labels: homo, lumo, gap, xtb_homo, xtb_lumo and energy in eV
(energy: total electronic energy U0 - ZPVE, the full value), mw in g/mol, tpsa in Å², logp and
complexity unitless.

With a `Bootstrap`, the scores also carry 95 % percentile intervals (over examples) of the MAE and the
valid ratio; `value_scores` scores numbers that need no parsing (the property heads) the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .bootstrap import Bootstrap, Interval, flatten_intervals, masked_mae_resamples

REFERENCE_NUMBER_PATTERN = r"-?\d+\.\d+"
ANY_NUMBER_PATTERN = r"-?\d+(?:\.\d+)?"


@dataclass(frozen=True)
class ValidRange:
    """An interval of plausible answers; bounds are open unless marked inclusive."""

    low: float
    high: float
    low_inclusive: bool = False
    high_inclusive: bool = False

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below

    def __str__(self) -> str:
        return f"{'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}{']' if self.high_inclusive else ')'}"


PROPERTY_RANGES: dict[str, ValidRange] = {
    "homo": ValidRange(-20.0, 20.0),  # eV (reference)
    "lumo": ValidRange(-20.0, 20.0),  # eV (reference)
    "gap": ValidRange(-20.0, 20.0),  # eV (reference)
    "mw": ValidRange(0.0, 4000.0),  # g/mol (reference)
    "energy": ValidRange(-1e6, 0.0),  # eV, U0 - ZPVE: QM9 molecules lie around -1e4 eV
    "logp": ValidRange(-30.0, 30.0),
    "tpsa": ValidRange(0.0, 3000.0, low_inclusive=True),  # Å²; 0 for hydrocarbons
    "complexity": ValidRange(0.0, 10000.0, low_inclusive=True),
    "xtb_homo": ValidRange(-30.0, 30.0),  # eV, GFN2-xTB scale (not DFT)
    "xtb_lumo": ValidRange(-30.0, 30.0),  # eV, GFN2-xTB scale (not DFT)
}
PROPERTY_TASKS = tuple(PROPERTY_RANGES)


@dataclass(frozen=True)
class PropertyScores:
    """MAE over valid answers (in the task's unit; NaN when none is valid) and the valid ratio in [0, 1];
    `intervals` (metric -> bootstrap interval) is empty unless a `Bootstrap` was given."""

    task: str
    mae: float
    valid_ratio: float
    n: int
    n_valid: int
    intervals: dict[str, Interval] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "mae": self.mae,
            "valid_ratio": self.valid_ratio,
            "n": self.n,
            "n_valid": self.n_valid,
            **flatten_intervals(self.intervals),
        }


def parse_answer(answer: str, pattern: str = REFERENCE_NUMBER_PATTERN) -> float | None:
    """The first number in `answer` matching `pattern`, or None."""
    match = re.search(pattern, answer)
    return float(match.group(0)) if match else None


def _range(task: str, valid_range: ValidRange | None) -> ValidRange:
    if valid_range is not None:
        return valid_range
    if task not in PROPERTY_RANGES:
        raise KeyError(f"no valid range for task {task!r}; known: {', '.join(PROPERTY_TASKS)}")
    return PROPERTY_RANGES[task]


def value_errors(
    task: str, values: Sequence[float | None], labels: Sequence[float], valid_range: ValidRange | None = None
) -> np.ndarray:
    """Per-example absolute errors (n,), NaN where the value is missing, not finite or out of range."""
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} answers but {len(labels)} labels")
    valid_range = _range(task, valid_range)
    errors = np.full(len(values), np.nan)
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        if value is not None and math.isfinite(value) and value in valid_range:
            errors[i] = abs(value - float(label))
    return errors


def answer_errors(
    task: str,
    answers: Sequence[str],
    labels: Sequence[float],
    *,
    valid_range: ValidRange | None = None,
    pattern: str = REFERENCE_NUMBER_PATTERN,
) -> np.ndarray:
    """Per-example absolute errors of generated answers (n,), NaN for invalid ones (see the module doc)."""
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers but {len(labels)} labels")
    return value_errors(task, [parse_answer(a, pattern) for a in answers], labels, valid_range)


def scores_from_errors(task: str, errors: np.ndarray, bootstrap: Bootstrap | None = None) -> PropertyScores:
    """MAE over the finite errors, valid ratio, and with `bootstrap` their intervals."""
    valid = [float(e) for e in errors if math.isfinite(e)]
    n = len(errors)
    intervals: dict[str, Interval] = {}
    if bootstrap is not None and n:
        weights = bootstrap.counts(n)
        intervals["mae"] = bootstrap.interval(masked_mae_resamples(np.asarray(errors, float), weights))
        intervals["valid_ratio"] = bootstrap.interval(weights @ np.isfinite(errors).astype(float) / n)
    return PropertyScores(
        task=task,
        mae=sum(valid) / len(valid) if valid else math.nan,
        valid_ratio=len(valid) / n if n else math.nan,
        n=n,
        n_valid=len(valid),
        intervals=intervals,
    )


def property_mae(
    task: str,
    answers: Sequence[str],
    labels: Sequence[float],
    *,
    valid_range: ValidRange | None = None,
    pattern: str = REFERENCE_NUMBER_PATTERN,
    bootstrap: Bootstrap | None = None,
) -> PropertyScores:
    """MAE and valid ratio of generated answers against labels (same unit; see the module doc).

    `valid_range` defaults to `PROPERTY_RANGES[task]`; unknown tasks need one.
    """
    errors = answer_errors(task, answers, labels, valid_range=valid_range, pattern=pattern)
    return scores_from_errors(task, errors, bootstrap)


def value_scores(
    task: str,
    values: Sequence[float | None],
    labels: Sequence[float],
    *,
    valid_range: ValidRange | None = None,
    bootstrap: Bootstrap | None = None,
) -> PropertyScores:
    """`property_mae` for numbers (e.g. the property heads' predictions): same range rule, no parsing."""
    return scores_from_errors(task, value_errors(task, values, labels, valid_range), bootstrap)


def mean_baseline(
    train_labels: Sequence[float], test_labels: Sequence[float], task: str = "", bootstrap: Bootstrap | None = None
) -> PropertyScores:
    """MAE of always answering the training-set mean (valid ratio 1): the floor a model must beat."""
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise ValueError("mean_baseline needs non-empty train and test labels")
    mean = math.fsum(train_labels) / len(train_labels)
    errors = [abs(float(y) - mean) for y in test_labels]
    intervals = {"mae": bootstrap.mean(np.array(errors))} if bootstrap is not None else {}
    return PropertyScores(
        task=task,
        mae=math.fsum(errors) / len(errors),
        valid_ratio=1.0,
        n=len(test_labels),
        n_valid=len(test_labels),
        intervals=intervals,
    )

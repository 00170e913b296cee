"""Percentile bootstrap intervals over examples, seeded.

A resample draws n of a task's n examples with replacement; the interval is the (1 - c)/2 and
(1 + c)/2 percentiles of the metric over `resamples` resamples (NaN resamples, e.g. an MAE whose
resample holds no valid answer, are left out). The draws depend on `seed` and n only, so every
metric of a task is resampled with the same draws (paired: the MAE with own and with swapped
molecule tokens, the MAE and the valid ratio), and a rerun gives the same intervals.

Metrics that are means over examples (ROUGE, METEOR, an MAE, a share) are resampled exactly from
per-example values; corpus BLEU from per-example sufficient statistics (see `text.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Interval = tuple[float, float]


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")

    def counts(self, n: int) -> np.ndarray:
        """(resamples, n) float64: how often each example is drawn in each resample (rows sum to n)."""
        if n < 1:
            raise ValueError("a bootstrap needs at least one example")
        rng = np.random.default_rng([self.seed, n])
        draws = rng.integers(0, n, size=(self.resamples, n))
        offsets = (np.arange(self.resamples) * n)[:, None]
        return (
            np.bincount((draws + offsets).ravel(), minlength=self.resamples * n)
            .reshape(self.resamples, n)
            .astype(np.float64)
        )

    def interval(self, values: np.ndarray) -> Interval:
        """The percentile interval of resampled metric values (NaN ones left out; all NaN -> NaN)."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            return math.nan, math.nan
        tail = 100.0 * (1.0 - self.confidence) / 2.0
        low, high = np.percentile(values, [tail, 100.0 - tail])
        return float(low), float(high)

    def mean(self, values: np.ndarray) -> Interval:
        """Interval of the mean of per-example values (n,)."""
        values = np.asarray(values, dtype=np.float64)
        return self.interval(self.counts(len(values)) @ values / len(values))

    def ratio(self, numerator: np.ndarray, denominator: np.ndarray) -> Interval:
        """Interval of sum(numerator) / sum(denominator) over examples (e.g. an MAE over valid answers)."""
        weights = self.counts(len(numerator))
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.interval(weights @ np.asarray(numerator, float) / (weights @ np.asarray(denominator, float)))


def masked_mae_resamples(errors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """MAE over the finite entries of per-example `errors` (NaN = invalid answer), per resample row of `weights`."""
    valid = np.isfinite(errors)
    with np.errstate(invalid="ignore", divide="ignore"):
        return weights @ np.where(valid, errors, 0.0) / (weights @ valid.astype(np.float64))


def interval_keys(metric: str) -> tuple[str, str]:
    """The report keys of `metric`'s interval bounds."""
    return f"{metric}_ci_low", f"{metric}_ci_high"


def flatten_intervals(intervals: dict[str, Interval]) -> dict[str, float]:
    """{"mae": (lo, hi)} -> {"mae_ci_low": lo, "mae_ci_high": hi}: how a report row carries them."""
    out: dict[str, float] = {}
    for metric, (low, high) in intervals.items():
        low_key, high_key = interval_keys(metric)
        out[low_key], out[high_key] = low, high
    return out

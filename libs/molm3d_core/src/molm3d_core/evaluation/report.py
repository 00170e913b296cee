"""Evaluation results as a JSON-serialisable dict and a markdown table per model or baseline.

A report has sections (one per model/baseline, e.g. `SECTION_DFT`), each a table with tasks as rows
and metrics as columns (the union of the metric names of its rows, in first-seen order). Scores
are added as mappings of numbers or as the score objects of this package (`TextScores`,
`PropertyScores`, `RetrievalScores`: anything with `as_dict()`; a `note` attribute, like the
METEOR variant of `TextScores`, is kept as a section note). NaN (e.g. an MAE with no valid answer)
becomes null in JSON and "n/a" in markdown; a metric a row lacks shows as "-".

A bootstrap interval travels as two more numbers of the row, `{metric}_ci_low` and `{metric}_ci_high`
(plain keys, so the JSON stays a flat mapping per row); the markdown folds them into the metric's
cell as `0.243 [0.231, 0.256]` and shows no columns of their own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

SECTION_DFT = "3D tokens (DFT geometry)"
SECTION_CONFORMER = "3D tokens (SMILES conformer)"
SECTION_SMILES_ONLY = "SMILES-only LM baseline"
SECTION_TRAIN_MEAN = "training-mean baseline"
SECTION_HEADS_DFT = "property heads (DFT geometry)"
SECTION_HEADS_CONFORMER = "property heads (SMILES conformer)"
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"

Number = float | int


class HasMetrics(Protocol):
    def as_dict(self) -> Mapping[str, Number]: ...


@dataclass
class Section:
    """One model or baseline: rows[task][metric] = value, plus free-text notes."""

    title: str
    rows: dict[str, dict[str, Number]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        columns: dict[str, None] = {}
        for metrics in self.rows.values():
            columns.update(dict.fromkeys(metrics))
        return list(columns)

    @property
    def shown_columns(self) -> list[str]:
        """The markdown's columns: interval bounds of a shown metric fold into its cell."""
        columns = self.columns
        return [c for c in columns if not any(c.endswith(s) and c[: -len(s)] in columns for s in (CI_LOW, CI_HIGH))]


def _json_number(value: Number) -> Number | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _cell(value: Number | None, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(int(value))
    return f"{value:.{decimals}f}"


def _metric_cell(row: Mapping[str, Number], metric: str, decimals: int) -> str:
    """The value, and its interval `[low, high]` when the row has both bounds."""
    cell = _cell(row[metric], decimals)
    low, high = row.get(metric + CI_LOW), row.get(metric + CI_HIGH)
    if low is None or high is None:
        return cell
    return f"{cell} [{_cell(low, decimals)}, {_cell(high, decimals)}]"


@dataclass
class EvaluationReport:
    """Sections in insertion order; `add` creates a section on first use."""

    title: str = "Evaluation"
    sections: dict[str, Section] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # checkpoint, dataset split, seed, ...

    def add(self, section: str, task: str, scores: HasMetrics | Mapping[str, Number], note: str | None = None) -> None:
        """Record the metrics of one task (a row) under a model/baseline (a section)."""
        entry = self.sections.setdefault(section, Section(section))
        metrics = scores.as_dict() if hasattr(scores, "as_dict") else scores
        entry.rows.setdefault(task, {}).update(metrics)
        for text in (note, getattr(scores, "note", None)):
            if text and text not in entry.notes:
                entry.notes.append(text)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready (NaN/inf -> None)."""
        return {
            "title": self.title,
            "metadata": self.metadata,
            "sections": [
                {
                    "title": s.title,
                    "rows": {task: {k: _json_number(v) for k, v in row.items()} for task, row in s.rows.items()},
                    "notes": list(s.notes),
                }
                for s in self.sections.values()
            ],
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationReport:
        report = cls(title=data.get("title", "Evaluation"), metadata=dict(data.get("metadata", {})))
        for s in data.get("sections", []):
            rows = {task: {k: math.nan if v is None else v for k, v in row.items()} for task, row in s["rows"].items()}
            report.sections[s["title"]] = Section(s["title"], rows, list(s.get("notes", [])))
        return report

    def to_markdown(self, decimals: int = 2) -> str:
        """`# title`, then per section a `## title` and a table (tasks x metrics) and its notes."""
        lines = [f"# {self.title}", ""]
        for key, value in self.metadata.items():
            lines.append(f"- {key}: {value}")
        if self.metadata:
            lines.append("")
        for section in self.sections.values():
            columns = section.shown_columns
            lines += [f"## {section.title}", ""]
            lines.append("| task | " + " | ".join(columns) + " |")
            lines.append("|---|" + "---:|" * len(columns))
            for task, row in section.rows.items():
                cells = [_metric_cell(row, c, decimals) if c in row else "-" for c in columns]
                lines.append(f"| {task} | " + " | ".join(cells) + " |")
            lines.append("")
            lines += [f"- {note}" for note in section.notes]
            if section.notes:
                lines.append("")
        return "\n".join(lines)

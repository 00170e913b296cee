"""Result writers: JSON lines (lossless) or CSV (flat; lists as JSON in their cell)."""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

FORMATS = ("jsonl", "csv")
# CSV column order: identity and provenance first, then task outputs, then the error.
_CSV_COLUMNS = (
    "record_id", "status", "task", "smiles", "inchikey", "source_format", "conformer_method", "warnings",
    "model_id", "model_trained", "caption", "question", "answer", "value", "unit", "finish_reason", "embedding_shape",
    "embedding", "error_code", "error_message",
)  # fmt: skip


class ResultWriter:
    def __init__(self, stream: TextIO, fmt: str, task: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
        self.stream, self.fmt = stream, fmt
        self._csv: csv.DictWriter | None = None
        if fmt == "csv":
            columns = [c for c in _CSV_COLUMNS if _column_applies(c, task)]
            self._csv = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            self._csv.writeheader()

    def write(self, result: dict[str, Any]) -> None:
        if self._csv is None:
            self.stream.write(json.dumps(result, ensure_ascii=False) + "\n")
        else:
            self._csv.writerow({k: _cell(v) for k, v in result.items()})
        self.stream.flush()


def _column_applies(column: str, task: str) -> bool:
    per_task = {
        "caption": {"caption", "finish_reason"},
        "ask": {"question", "answer", "value", "unit", "finish_reason"},
        "embed": {"embedding", "embedding_shape"},
    }
    task_columns = set().union(*per_task.values())
    return column not in task_columns or column in per_task[task]


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return "; ".join(value)  # warnings
        return json.dumps(value)
    return "" if value is None else value

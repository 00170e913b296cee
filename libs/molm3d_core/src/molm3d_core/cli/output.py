"""Result writers: JSON lines (lossless) or CSV (flat; lists as JSON in their cell).

`predict` rows carry `"properties": {name: {"value": v, "unit": u}}` in JSON lines; in CSV each
property is one column, `NAME_UNIT` with the unit as written in the catalogue (`homo_eV`, `mw_g/mol`,
`cv_cal/(mol K)`), or plain `NAME` for a dimensionless one (`logp`): see `property_column`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any, TextIO

from ..targets import TARGETS

FORMATS = ("jsonl", "csv")
# CSV column order: identity and provenance first, then task outputs, then the error.
_CSV_COLUMNS = (
    "record_id", "status", "task", "smiles", "inchikey", "source_format", "conformer_method", "warnings",
    "model_id", "model_trained", "caption", "question", "answer", "value", "unit", "finish_reason", "embedding_shape",
    "embedding", "properties", "error_code", "error_message",
)  # fmt: skip


def property_column(name: str) -> str:
    """The CSV column of a property: `NAME_UNIT` (`homo_eV`), or `NAME` when it has no unit (`logp`)."""
    unit = TARGETS[name].unit
    return f"{name}_{unit}" if unit else name


class ResultWriter:
    """Rows to a stream; `properties` (the `predict` targets, in order) name the CSV's property columns."""

    def __init__(self, stream: TextIO, fmt: str, task: str, properties: Sequence[str] = ()) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
        self.stream, self.fmt = stream, fmt
        self._csv: csv.DictWriter | None = None
        if fmt == "csv":
            columns: list[str] = []
            for c in _CSV_COLUMNS:
                if c == "properties":
                    columns += [property_column(p) for p in properties] if task == "predict" else []
                elif _column_applies(c, task):
                    columns.append(c)
            self._csv = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            self._csv.writeheader()

    def write(self, result: dict[str, Any]) -> None:
        if self._csv is None:
            self.stream.write(json.dumps(result, ensure_ascii=False) + "\n")
        else:
            row = {k: _cell(v) for k, v in result.items() if k != "properties"}
            for name, prop in (result.get("properties") or {}).items():
                row[property_column(name)] = _cell(prop["value"])
            self._csv.writerow(row)
        self.stream.flush()


def _column_applies(column: str, task: str) -> bool:
    per_task = {
        "caption": {"caption", "finish_reason"},
        "ask": {"question", "answer", "value", "unit", "finish_reason"},
        "embed": {"embedding", "embedding_shape"},
        "predict": set(),  # its properties get a column each (see ResultWriter)
    }
    task_columns = set().union(*per_task.values())
    return column not in task_columns or column in per_task[task]


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return "; ".join(value)  # warnings
        return json.dumps(value)
    return "" if value is None else value

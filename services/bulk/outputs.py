"""A job's result rows as files: JSON lines, CSV or SDF, written the same way by `molm3d bulk fetch`
and by the gateway's GET /v1/bulk/jobs/{id}/results (services/gateway/bulk_api.py)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any, TextIO

OUTPUT_FORMATS = ("jsonl", "csv", "sdf")
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv", "sdf": "chemical/x-mdl-sdfile"}


def write_rows(rows: Iterable[dict[str, Any]], out: TextIO, fmt: str) -> None:
    """Rows (jobs.result_rows / failure_rows) to a text stream opened with newline=""."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        rows = list(rows)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in row.items()})
    else:
        _write_sdf(rows, out)


def rows_text(rows: Iterable[dict[str, Any]], fmt: str) -> str:
    """The file `write_rows` writes, as a string."""
    out = io.StringIO(newline="")
    write_rows(rows, out, fmt)
    return out.getvalue()


def _write_sdf(rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    """One molecule per answered item (2D depiction from its SMILES) with the answer as SD fields. An SD
    field ends at a blank line, so text values are written on one line (whitespace runs -> one space)."""
    from rdkit import Chem

    writer = Chem.SDWriter(out)
    for row in rows:
        mol = Chem.MolFromSmiles(row["smiles"])
        if mol is None:
            continue
        mol.SetProp("_Name", str(row.get("record_id") or ""))
        for key, value in row.items():
            if value is None or key == "smiles":
                continue
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            mol.SetProp(key, " ".join(text.split()))
        writer.write(mol)
    writer.close()

"""Result rows: what `molm3d caption | ask | embed | predict` write, one per input record.

Every path builds its rows here, so that a row has the same fields and formatting whether the model
ran in this process (`pipeline.Predictor`) or on a server (`--remote`: services/client.py, from the
gateway's Answer):

    {"task", "model_id", "model_trained", "status": "ok", "record_id", "smiles", "inchikey",
     "source_format", "conformer_method", "warnings", <the task's outputs>, "request_id"}
    {"task", "model_id", "model_trained", "status": "error", "record_id", "error_code", "error_message",
     "request_id"}

Outputs per task: caption `caption, finish_reason`; ask `question, answer, value, unit, finish_reason`
(value and unit parsed from the answer here, on both paths); embed `embedding, embedding_shape`;
predict `properties`. A value a path cannot know is None: `request_id` in this process (it is the
server's id of the call), `source_format` of a bulk result (the server does not echo it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .prompts import parse_number


@dataclass(frozen=True)
class Provenance:
    """Which molecule a row is about and how its conformer was made."""

    record_id: str
    smiles: str  # canonical
    inchikey: str | None
    source_format: str | None  # smiles | sdf | mol | xyz | pdb; None: not known (a bulk result)
    conformer_method: str  # e.g. etkdg_v3+mmff, input_3d
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelRef:
    """The model that answered: its id, and whether it is trained (None: not known)."""

    model_id: str | None
    trained: bool | None = None


def generation_outputs(task: str, text: str, finish_reason: str, question: str | None = None) -> dict[str, Any]:
    """The outputs of a caption or an answer; an answer's first number and its unit are parsed here."""
    if task == "caption":
        return {"caption": text, "finish_reason": finish_reason}
    number = parse_number(text)
    return {
        "question": question,
        "answer": text,
        "value": number.value if number else None,
        "unit": number.unit if number else None,
        "finish_reason": finish_reason,
    }


def embedding_outputs(embedding: list[list[float]]) -> dict[str, Any]:
    """The outputs of `embed`: (Q, E) unit vectors as nested lists, and their shape."""
    return {"embedding": embedding, "embedding_shape": [len(embedding), len(embedding[0]) if embedding else 0]}


def ok_row(
    task: str, model: ModelRef, provenance: Provenance, outputs: dict[str, Any], request_id: str | None = None
) -> dict[str, Any]:
    p = provenance
    return {
        "task": task,
        "model_id": model.model_id,
        "model_trained": model.trained,
        "status": "ok",
        "record_id": p.record_id,
        "smiles": p.smiles,
        "inchikey": p.inchikey,
        "source_format": p.source_format,
        "conformer_method": p.conformer_method,
        "warnings": list(p.warnings),
        **outputs,
        "request_id": request_id or None,
    }


def error_row(
    task: str,
    model: ModelRef,
    record_id: str | None,
    code: str,
    message: str,
    request_id: str | None = None,
) -> dict[str, Any]:
    return {
        "task": task,
        "model_id": model.model_id,
        "model_trained": model.trained,
        "status": "error",
        "record_id": record_id,
        "error_code": code,
        "error_message": message,
        "request_id": request_id or None,
    }

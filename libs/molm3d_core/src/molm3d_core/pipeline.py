"""Records in, results out: conformer -> features -> batched model call, one bad record at a time.

This is the one inference path the CLI runs (and the services and bulk workers will call stage by
stage). Every input record yields exactly one result, in input order: either the model's output with
its provenance, or the typed error that stopped that record.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .checkpoints import CheckpointInfo
from .chem import (
    Conformer,
    ConformerOptions,
    MoleculeFeatures,
    MoleculeRecord,
    collate,
    featurize,
    generate_conformer,
)
from .errors import ErrorCode, MoleculeError
from .models import DecodingOptions, MoLM3D
from .prompts import parse_number

Task = Literal["caption", "ask", "embed"]
TASKS: tuple[Task, ...] = ("caption", "ask", "embed")


@dataclass
class PreparedMolecule:
    record: MoleculeRecord
    conformer: Conformer
    features: MoleculeFeatures

    def provenance(self) -> dict[str, Any]:
        return {
            "record_id": self.record.record_id,
            "smiles": self.record.smiles,
            "inchikey": self.record.inchikey,
            "source_format": self.record.source_format,
            "conformer_method": self.conformer.method,
            "warnings": [*self.record.warnings, *self.conformer.warnings],
        }


def prepare_molecule(record: MoleculeRecord, options: ConformerOptions, max_atoms: int) -> PreparedMolecule:
    """Conformer + Uni-Mol features for one record; raises MoleculeError naming the record."""
    try:
        conformer = generate_conformer(record, options)
        return PreparedMolecule(record, conformer, featurize(conformer, max_atoms=max_atoms))
    except MoleculeError as err:
        raise err.with_record(record.record_id) from None


@dataclass
class Predictor:
    """A loaded model plus the options of one run."""

    model: MoLM3D
    info: CheckpointInfo
    conformer_options: ConformerOptions = field(default_factory=ConformerOptions)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    batch_size: int = 8

    @torch.no_grad()
    def run_batch(self, batch: list[PreparedMolecule], task: Task, question: str | None = None) -> list[dict[str, Any]]:
        """Model outputs for prepared molecules (one dict of task fields each)."""
        features = collate([p.features for p in batch])
        smiles = [p.record.smiles for p in batch]
        if task == "embed":
            emb = self.model.embed_molecules(features).float().cpu()  # (B, Q, E)
            return [{"embedding": e.tolist(), "embedding_shape": list(e.shape)} for e in emb]
        if task == "caption":
            gens = self.model.caption(features, smiles, self.decoding)
            return [{"caption": g.text, "finish_reason": g.finish_reason} for g in gens]
        gens = self.model.ask(features, smiles, [question or ""] * len(batch), self.decoding)
        out = []
        for g in gens:
            number = parse_number(g.text)
            out.append(
                {
                    "question": question,
                    "answer": g.text,
                    "value": number.value if number else None,
                    "unit": number.unit if number else None,
                    "finish_reason": g.finish_reason,
                }
            )
        return out

    def run(
        self,
        items: Iterable[MoleculeRecord | MoleculeError],
        task: Task,
        question: str | None = None,
        progress: Any | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One result dict per item, in input order; `progress` (a tqdm bar) advances per record."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if task == "ask" and not (question and question.strip()):
            raise MoleculeError(ErrorCode.INVALID_REQUEST, "ask needs a non-empty question")
        base = {"task": task, "model_id": self.info.model_id, "model_trained": self.info.trained}
        # Results wait in `queue` until the batch holding the molecules before them has run, so that
        # output order is input order while errors do not break batches up.
        queue: list[PreparedMolecule | dict[str, Any]] = []
        n_prepared = 0

        def flush() -> Iterator[dict[str, Any]]:
            nonlocal n_prepared
            prepared = [q for q in queue if isinstance(q, PreparedMolecule)]
            outputs = iter(self.run_batch(prepared, task, question) if prepared else [])
            for entry in queue:
                if isinstance(entry, PreparedMolecule):
                    yield {**base, "status": "ok", **entry.provenance(), **next(outputs)}
                else:
                    yield entry
                if progress is not None:
                    progress.update(1)
            queue.clear()
            n_prepared = 0

        for item in items:
            try:
                if isinstance(item, MoleculeError):
                    raise item
                queue.append(prepare_molecule(item, self.conformer_options, self.model.config.max_atoms))
                n_prepared += 1
            except MoleculeError as err:
                queue.append(
                    {
                        **base,
                        "status": "error",
                        "record_id": err.record_id,
                        "error_code": err.code.value,
                        "error_message": err.message,
                    }
                )
            if n_prepared == 0 or n_prepared >= self.batch_size:
                yield from flush()
        yield from flush()

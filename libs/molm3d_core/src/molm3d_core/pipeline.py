"""Records in, results out: conformer -> features -> batched model call, one bad record at a time.

This is the one inference path the CLI runs (and the services and bulk workers will call stage by
stage). Every input record yields exactly one result, in input order: either the model's output with
its provenance, or the typed error that stopped that record. The rows are built by `results.py`, where the
served path (`molm3d caption --remote`) builds its rows too.
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
from .decoding import DecodingOptions, default_decoding
from .errors import ErrorCode, MoleculeError
from .models import MoLM3D
from .results import ModelRef, Provenance, embedding_outputs, error_row, generation_outputs, ok_row
from .targets import TARGETS

Task = Literal["caption", "ask", "embed", "predict"]
TASKS: tuple[Task, ...] = ("caption", "ask", "embed", "predict")


@dataclass
class PreparedMolecule:
    record: MoleculeRecord
    conformer: Conformer
    features: MoleculeFeatures

    def provenance(self) -> Provenance:
        return Provenance(
            record_id=self.record.record_id,
            smiles=self.record.smiles,
            inchikey=self.record.inchikey,
            source_format=self.record.source_format,
            conformer_method=self.conformer.method,
            warnings=[*self.record.warnings, *self.conformer.warnings],
        )


def prepare_molecule(record: MoleculeRecord, options: ConformerOptions, max_atoms: int) -> PreparedMolecule:
    """Conformer + Uni-Mol features for one record; raises MoleculeError naming the record."""
    try:
        conformer = generate_conformer(record, options)
        return PreparedMolecule(record, conformer, featurize(conformer, max_atoms=max_atoms))
    except MoleculeError as err:
        raise err.with_record(record.record_id) from None


def check_properties(
    model: MoLM3D, names: Iterable[str] | None = None, checkpoint: str | None = None
) -> tuple[str, ...]:
    """The property heads `predict` answers with: `names` (deduplicated, in the order given) or, for
    None, all of the model's heads. ValueError (one line) when the model has no heads or a name is
    not one of them; `checkpoint` names the model in that message."""
    head = model.property_head
    if head is None:
        raise ValueError(
            f"this checkpoint has no property heads; {checkpoint or 'it'} predates them or was trained without "
            "(caption, ask and embed still work on it)"
        )
    if names is None:
        return head.targets
    chosen = tuple(dict.fromkeys(names))
    unknown = [n for n in chosen if n not in head.targets]
    if unknown:
        raise ValueError(
            f"unknown propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
            f"this checkpoint predicts: {' '.join(head.targets)}"
        )
    if not chosen:
        raise ValueError(f"no properties chosen; this checkpoint predicts: {' '.join(head.targets)}")
    return chosen


@dataclass
class Predictor:
    """A loaded model plus the options of one run.

    `properties`: the targets `predict` outputs (None: every head of the model), checked here.
    `decoding`: None decodes each task with its default (`default_decoding`), as the CLI and services do.
    """

    model: MoLM3D
    info: CheckpointInfo
    conformer_options: ConformerOptions = field(default_factory=ConformerOptions)
    decoding: DecodingOptions | None = None
    batch_size: int = 8
    properties: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.properties is not None:
            self.properties = check_properties(self.model, self.properties)

    @torch.no_grad()
    def run_batch(self, batch: list[PreparedMolecule], task: Task, question: str | None = None) -> list[dict[str, Any]]:
        """Model outputs for prepared molecules (one dict of task fields each, see `results`)."""
        features = collate([p.features for p in batch])
        smiles = [p.record.smiles for p in batch]
        if task == "predict":
            values = self.model.predict_properties(features)  # name -> (B,) float64 in the target's unit
            names = self.properties or tuple(values)
            columns = {n: values[n].cpu().tolist() for n in names}
            return [
                {"properties": {n: {"value": columns[n][i], "unit": TARGETS[n].unit} for n in names}}
                for i in range(len(batch))
            ]
        if task == "embed":
            emb = self.model.embed_molecules(features).float().cpu()  # (B, Q, E)
            return [embedding_outputs(e.tolist()) for e in emb]
        decoding = self.decoding or default_decoding(task)
        if task == "caption":
            gens = self.model.caption(features, smiles, decoding)
        else:
            gens = self.model.ask(features, smiles, [question or ""] * len(batch), decoding)
        return [generation_outputs(task, g.text, g.finish_reason, question) for g in gens]

    def run(
        self,
        items: Iterable[MoleculeRecord | MoleculeError],
        task: Task,
        question: str | None = None,
        progress: Any | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One result dict per item, in input order; `progress` (a tqdm bar) advances per record.

        The task and its options are checked here, before the first record is read (ValueError or
        MoleculeError), so that a caller can refuse a run before writing any output.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if task == "ask" and not (question and question.strip()):
            raise MoleculeError(ErrorCode.INVALID_REQUEST, "ask needs a non-empty question")
        if task == "predict":
            check_properties(self.model, self.properties)
            if not self.model.property_head.trained:
                raise ValueError(
                    "the property heads of this checkpoint were never trained (no target statistics): "
                    "they give no values in units"
                )
        return self._results(items, task, question, progress)

    def _results(
        self,
        items: Iterable[MoleculeRecord | MoleculeError],
        task: Task,
        question: str | None,
        progress: Any | None,
    ) -> Iterator[dict[str, Any]]:
        model = ModelRef(self.info.model_id, self.info.trained)
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
                    yield ok_row(task, model, entry.provenance(), next(outputs))
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
                queue.append(error_row(task, model, err.record_id, err.code.value, err.message))
            if n_prepared == 0 or n_prepared >= self.batch_size:
                yield from flush()
        yield from flush()

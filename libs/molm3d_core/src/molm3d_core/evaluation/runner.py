"""Run a checkpoint over a dataset split and score it with the reference protocol.

Sections of the report:
- 3D tokens (DFT geometry): examples whose molecule has a QM9 DFT geometry, encoded from it;
- 3D tokens (SMILES conformer): every example, encoded from the RDKit conformer generated from the
  SMILES (what users send), plus retrieval on the 2,000-pair test set;
- SMILES-only LM baseline: a checkpoint trained without molecule tokens, same examples and decoding;
- training-mean baseline: each property predicted as its training-split mean.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..chem import collate
from ..data.dataset import Dataset, load_dataset
from ..data.features import Geometry, has_geometry, molecule_features
from ..models import DecodingOptions, MoLM3D
from .properties import PROPERTY_TASKS, mean_baseline, property_mae
from .report import SECTION_CONFORMER, SECTION_DFT, SECTION_SMILES_ONLY, SECTION_TRAIN_MEAN, EvaluationReport
from .retrieval import evaluate_retrieval_embeddings
from .text import text_metrics

Example = tuple[dict[str, Any], dict[str, Any]]  # (molecule row, task row)


@dataclass
class EvalOptions:
    split: str = "test"
    tasks: tuple[str, ...] = ()  # empty: every task of the split, plus retrieval
    limit: int | None = None  # examples per task (and retrieval pairs)
    batch_size: int = 8
    # Re-rank retrieval candidates with the matching head (128 per query: on 2 CPU cores about 17 pairs/s,
    # so hours for the whole test set; False scores the embedding similarity alone).
    rerank: bool = True
    decoding: DecodingOptions = field(default_factory=lambda: DecodingOptions(max_new_tokens=64))
    progress: bool = True

    def wants(self, task: str) -> bool:
        return not self.tasks or task in self.tasks


def _examples(dataset: Dataset, opts: EvalOptions, geometry: Geometry | None) -> dict[str, list[Example]]:
    by_task: dict[str, list[Example]] = defaultdict(list)
    for molecule, row in dataset.examples(opts.split):
        if not opts.wants(row["task"]) or (geometry is not None and not has_geometry(molecule, geometry)):
            continue
        if opts.limit is None or len(by_task[row["task"]]) < opts.limit:
            by_task[row["task"]].append((molecule, row))
    return dict(by_task)


@torch.no_grad()
def generate_answers(model: MoLM3D, examples: list[Example], geometry: Geometry | None, opts: EvalOptions,
                     desc: str) -> list[str]:  # fmt: skip
    """The model's answers, batched; `geometry=None` for a SMILES-only model."""
    answers: list[str] = []
    bar = tqdm(total=len(examples), desc=desc, unit="ex", file=sys.stderr, disable=not opts.progress, leave=False)
    for start in range(0, len(examples), opts.batch_size):
        chunk = examples[start : start + opts.batch_size]
        features = None
        if model.config.molecule_tokens:
            features = collate([molecule_features(m, geometry or "etkdg", model.config.max_atoms) for m, _ in chunk])
        gens = model.generate(features, [m["smiles"] for m, _ in chunk], [r["instruction"] for _, r in chunk],
                              opts.decoding)  # fmt: skip
        answers += [g.text for g in gens]
        bar.update(len(chunk))
    bar.close()
    return answers


def score_generation(
    report: EvaluationReport, section: str, model: MoLM3D, by_task: dict[str, list[Example]],
    geometry: Geometry | None, opts: EvalOptions,
) -> None:  # fmt: skip
    tokenize: Callable[[str], list[str]] = model.lm.tokenizer.tokenize  # BLEU/METEOR on LM tokens, as the reference
    for task, examples in sorted(by_task.items()):
        answers = generate_answers(model, examples, geometry, opts, desc=f"{section}: {task}")
        if task in PROPERTY_TASKS:
            report.add(section, task, property_mae(task, answers, [r["label"] for _, r in examples]))
        else:
            report.add(section, task, text_metrics(answers, [r["answer"] for _, r in examples], tokenize=tokenize))


@torch.no_grad()
def score_retrieval(report: EvaluationReport, model: MoLM3D, dataset: Dataset, opts: EvalOptions) -> None:
    pairs = [p for p in dataset.retrieval if has_geometry(dataset.molecules[p["mol_id"]], "etkdg")]
    pairs = pairs[: opts.limit] if opts.limit else pairs
    if len(pairs) < 2:
        return
    feats = [molecule_features(dataset.molecules[p["mol_id"]], "etkdg", model.config.max_atoms) for p in pairs]
    bs = max(opts.batch_size, 32)
    mol = torch.cat([model.embed_molecules(collate(feats[i : i + bs])).float().cpu() for i in range(0, len(feats), bs)])
    texts = [p["text"] for p in pairs]
    txt = torch.cat([model.embed_texts(texts[i : i + bs]).float().cpu() for i in range(0, len(texts), bs)])

    def match_score(mol_idx: np.ndarray, text_idx: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(mol_idx), bs):
            m, t = mol_idx[i : i + bs], text_idx[i : i + bs]
            out.append(model.match_logits(collate([feats[j] for j in m]), [texts[j] for j in t]).float().cpu())
        return torch.cat(out).numpy()

    # Full test set through the retrieval index (exact flat kind), in-batch on blocks of the similarities.
    scorer = match_score if opts.rerank else None
    for setting, scores in evaluate_retrieval_embeddings(mol, txt, scorer, batch_size=64).items():
        report.add(SECTION_CONFORMER, f"retrieval ({setting})", scores)


def evaluate(
    model: MoLM3D, data_dir: str | Path, opts: EvalOptions, smiles_only: MoLM3D | None = None,
    model_id: str = "",
) -> EvaluationReport:  # fmt: skip
    """Every section for `model` (and the SMILES-only baseline when given) on `opts.split`."""
    dataset = load_dataset(data_dir)
    report = EvaluationReport(title=f"Evaluation of {model_id or 'model'} on {opts.split}",
                              metadata={"data_dir": str(data_dir), "split": opts.split, "limit": opts.limit,
                                        "decoding": vars(opts.decoding), "model_id": model_id})  # fmt: skip
    if model.config.molecule_tokens:
        score_generation(report, SECTION_DFT, model, _examples(dataset, opts, "dft"), "dft", opts)
        score_generation(report, SECTION_CONFORMER, model, _examples(dataset, opts, "etkdg"), "etkdg", opts)
        if opts.wants("retrieval"):
            score_retrieval(report, model, dataset, opts)
    else:
        score_generation(report, SECTION_SMILES_ONLY, model, _examples(dataset, opts, None), None, opts)
    if smiles_only is not None:
        score_generation(report, SECTION_SMILES_ONLY, smiles_only, _examples(dataset, opts, None), None, opts)
    train_labels: dict[str, list[float]] = defaultdict(list)
    for row in dataset.tasks.get("train", []):
        if row["task"] in PROPERTY_TASKS and row["label"] is not None:
            train_labels[row["task"]].append(row["label"])
    for task, examples in sorted(_examples(dataset, opts, None).items()):
        if task in PROPERTY_TASKS and train_labels[task]:
            report.add(
                SECTION_TRAIN_MEAN, task, mean_baseline(train_labels[task], [r["label"] for _, r in examples], task)
            )
    return report

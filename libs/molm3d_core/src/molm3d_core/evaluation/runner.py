"""Run a checkpoint over a dataset split and score it with the reference protocol.

Sections of the report:
- 3D tokens (DFT geometry): examples whose molecule has a QM9 DFT geometry, encoded from it;
- 3D tokens (SMILES conformer): every example, encoded from the RDKit conformer generated from the
  SMILES (what users send), plus retrieval on the 2,000-pair test set;
- property heads (DFT geometry / SMILES conformer): the encoder's regression heads (`molm3d predict`)
  on the same examples as the LM's property tasks, for every task that is also a head target;
- SMILES-only LM baseline: a checkpoint trained without molecule tokens, same examples and decoding;
- training-mean baseline: each property predicted as its training-split mean.
Every MAE, valid ratio and text metric carries a seeded percentile bootstrap interval over examples
(`EvalOptions.bootstrap`). Options add a token ablation to the 3D sections (`token_ablation`: the
property tasks again with each molecule's `<mol>` tokens taken from another molecule) and replace the
sections by a comparison of decodings on the text tasks (`decoding_grid`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..chem import collate
from ..data.dataset import Dataset, load_dataset
from ..data.features import Geometry, has_geometry, molecule_features
from ..decoding import TASK_DEFAULTS, default_decoding
from ..models import DecodingOptions, Generation, MoLM3D
from ..targets import TARGETS
from .bootstrap import Bootstrap, flatten_intervals, masked_mae_resamples
from .properties import PROPERTY_TASKS, answer_errors, mean_baseline, scores_from_errors, value_scores
from .report import (
    SECTION_CONFORMER,
    SECTION_DFT,
    SECTION_HEADS_CONFORMER,
    SECTION_HEADS_DFT,
    SECTION_SMILES_ONLY,
    SECTION_TRAIN_MEAN,
    EvaluationReport,
)
from .retrieval import evaluate_retrieval_embeddings
from .text import REPEAT_NOTE, text_metrics

Example = tuple[dict[str, Any], dict[str, Any]]  # (molecule row, task row)

# Property tasks the encoder's heads also predict (same name, same unit).
HEAD_TASKS = tuple(t for t in PROPERTY_TASKS if t in TARGETS)

# `decoding_grid`: name -> decoding on top of PLAIN (greedy, no penalty, no n-gram block);
# max_new_tokens and length_penalty come from `EvalOptions.decoding`.
PLAIN = {"num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
PENALTIES = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}
DECODING_GRID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("greedy", {}),
    ("greedy, repetition_penalty 1.2", {"repetition_penalty": 1.2}),
    ("greedy, no_repeat_ngram 3", {"no_repeat_ngram_size": 3}),
    ("greedy, no_repeat_ngram 4", {"no_repeat_ngram_size": 4}),
    ("greedy, no_repeat_ngram 4, repetition_penalty 1.2", {"no_repeat_ngram_size": 4, "repetition_penalty": 1.2}),
    ("beam 3", {"num_beams": 3}),
    ("beam 3, both penalties", {"num_beams": 3, **PENALTIES}),
    ("beam 5", {"num_beams": 5}),
    ("beam 5, both penalties", {"num_beams": 5, **PENALTIES}),
)

ABLATION_NOTE = (
    "token ablation: mae_swapped is the MAE when each example's <mol> tokens come from another example of "
    "the task (a seeded cycle through all of them, independent of the batch size; the SMILES in the prompt "
    "stays right); swap_ratio = mae_swapped / mae (about 1: the answers do not use the molecule tokens); "
    "swap_identical = share of answers that did not change"
)
HEADS_NOTE = (
    "the encoder's property heads (`molm3d predict`) on the same examples as the LM's property tasks; "
    "a prediction outside the task's valid range counts as invalid, as an LM answer would"
)
GRID_NOTE = (
    "mean_tokens: generated LM tokens per text (EOS included); truncated: % that hit max_new_tokens; "
    "tokens_per_s: generated tokens per second of wall time (molecule encoding included)"
)


# geometry -> (its LM section, its property-head section)
GEOMETRY_SECTIONS: dict[str, tuple[str, str]] = {
    "dft": (SECTION_DFT, SECTION_HEADS_DFT),
    "etkdg": (SECTION_CONFORMER, SECTION_HEADS_CONFORMER),
}


@dataclass
class EvalOptions:
    split: str = "test"
    tasks: tuple[str, ...] = ()  # empty: every task of the split, plus retrieval
    limit: int | None = None  # examples per task (and retrieval pairs)
    text_limit: int | None = None  # examples per text task (caption, descriptions, ...); None: `limit`
    batch_size: int = 8
    # Re-rank retrieval candidates with the matching head (128 per query: on 2 CPU cores about 17 pairs/s,
    # so hours for the whole test set; False scores the embedding similarity alone).
    rerank: bool = True
    # Overrides of each task's default decoding (`default_decoding`: captions get a repetition penalty,
    # answers do not), as the CLI and the services decode.
    decoding: dict[str, Any] = field(default_factory=dict)
    progress: bool = True  # a tqdm bar (for a terminal)
    progress_every: int = 0  # without the bar: a plain stderr line every N batches and at the end (0 = none)
    bootstrap: Bootstrap | None = field(default_factory=Bootstrap)  # None: no intervals
    heads: bool = True  # score the property heads (when the model has trained ones)
    lm: bool = True  # False: no LM generation (the head and training-mean sections only: fast)
    token_ablation: bool = False
    ablation_seed: int = 0
    decoding_grid: bool = False  # compare DECODING_GRID on the text tasks instead of the usual sections
    geometries: tuple[Geometry, ...] = ("dft", "etkdg")  # the 3D inputs of the 3D and head sections

    def __post_init__(self) -> None:
        unknown = set(self.decoding) - {f.name for f in dataclasses.fields(DecodingOptions)}
        if unknown:
            raise ValueError(f"unknown decoding options: {sorted(unknown)}")
        for task in ("", *TASK_DEFAULTS):
            self.decoding_for(task)  # ValueError now rather than after an hour of answers

    def decoding_for(self, task: str) -> DecodingOptions:
        return default_decoding(task, **self.decoding)

    def wants(self, task: str) -> bool:
        return not self.tasks or task in self.tasks

    def task_limit(self, task: str) -> int | None:
        if task in PROPERTY_TASKS or self.text_limit is None:
            return self.limit
        return self.text_limit


class Progress:
    """A tqdm bar when `opts.progress`; otherwise (background logs) a plain stderr line at the start,
    every `opts.progress_every` updates and at the end, with examples/s and the time left."""

    def __init__(self, total: int, desc: str, opts: EvalOptions) -> None:
        self.total, self.desc, self.every = total, desc, opts.progress_every
        self.bar = tqdm(total=total, desc=desc, unit="ex", file=sys.stderr, leave=False) if opts.progress else None
        self.done = self.updates = 0
        self.start = time.perf_counter()
        if self.bar is None and self.every > 0:
            self._line(f"0/{total} examples")

    def _line(self, text: str) -> None:
        print(f"eval | {self.desc} | {text}", file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        self.updates += 1
        if self.bar is not None:
            self.bar.update(n)
        elif self.every > 0 and (self.updates % self.every == 0 or self.done >= self.total):
            elapsed = time.perf_counter() - self.start
            rate = self.done / elapsed if elapsed > 0 else math.inf
            left = (self.total - self.done) / rate if rate > 0 else math.inf
            self._line(f"{self.done}/{self.total} examples | {rate:.2f} ex/s | {elapsed:.0f} s, ~{left:.0f} s left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _examples(dataset: Dataset, opts: EvalOptions, geometry: Geometry | None) -> dict[str, list[Example]]:
    by_task: dict[str, list[Example]] = defaultdict(list)
    for molecule, row in dataset.examples(opts.split):
        if not opts.wants(row["task"]) or (geometry is not None and not has_geometry(molecule, geometry)):
            continue
        limit = opts.task_limit(row["task"])
        if limit is None or len(by_task[row["task"]]) < limit:
            by_task[row["task"]].append((molecule, row))
    return dict(by_task)


def swap_donors(n: int, seed: int) -> np.ndarray:
    """donors[i]: the example whose molecule tokens example i gets in the token ablation. A seeded
    cycle through all n examples, so none keeps its own (n > 1) and no batch size changes the pairing."""
    order = np.random.default_rng(seed).permutation(n)
    donors = np.empty(n, dtype=np.int64)
    donors[order] = np.roll(order, -1)
    return donors


@torch.no_grad()
def generate_answers(
    model: MoLM3D, examples: list[Example], geometry: Geometry | None, opts: EvalOptions, desc: str,
    *, decoding: DecodingOptions, donors: Sequence[int] | None = None,
) -> list[Generation]:  # fmt: skip
    """The model's generations, batched; `geometry=None` for a SMILES-only model. With `donors`,
    example i is asked with its own prompt (SMILES, question) but the molecule tokens of example
    donors[i] (the token ablation)."""
    gens: list[Generation] = []
    progress = Progress(len(examples), desc, opts)
    for start in range(0, len(examples), opts.batch_size):
        chunk = examples[start : start + opts.batch_size]
        smiles, questions = [m["smiles"] for m, _ in chunk], [r["instruction"] for _, r in chunk]
        if donors is None:
            features = None
            if model.config.molecule_tokens:
                geo = geometry or "etkdg"
                features = collate([molecule_features(m, geo, model.config.max_atoms) for m, _ in chunk])
            gens += model.generate(features, smiles, questions, decoding)
        else:
            # MoLM3D.generate's steps, with the molecule tokens of other examples.
            rows = [examples[j][0] for j in donors[start : start + opts.batch_size]]
            features = collate([molecule_features(m, geometry or "etkdg", model.config.max_atoms) for m in rows])
            prompts = [model.prompt(q, s) for q, s in zip(questions, smiles, strict=True)]
            gens += model.lm.generate(prompts, model.molecule_tokens(features), decoding)
        progress.update(len(chunk))
    progress.close()
    return gens


def token_ablation_row(
    model: MoLM3D, task: str, examples: list[Example], geometry: Geometry, opts: EvalOptions, desc: str,
    own_answers: list[str], own_errors: np.ndarray,
) -> dict[str, float]:  # fmt: skip
    """mae_swapped (+ interval), swap_ratio = mae_swapped / mae (+ paired interval), swap_identical."""
    donors = swap_donors(len(examples), opts.ablation_seed)
    swapped = [g.text for g in generate_answers(model, examples, geometry, opts, f"{desc} (swapped tokens)",
                                                decoding=opts.decoding_for(task), donors=donors)]  # fmt: skip
    errors = answer_errors(task, swapped, [r["label"] for _, r in examples])
    scores = scores_from_errors(task, errors, opts.bootstrap)
    own_mae = scores_from_errors(task, own_errors).mae
    row: dict[str, float] = {
        "mae_swapped": scores.mae,
        "valid_ratio_swapped": scores.valid_ratio,
        "swap_ratio": scores.mae / own_mae if own_mae > 0 else math.nan,
        "swap_identical": sum(a == b for a, b in zip(own_answers, swapped, strict=True)) / len(examples),
    }
    if opts.bootstrap is not None:
        weights = opts.bootstrap.counts(len(examples))  # the draws of the own-token MAE: a paired interval
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = masked_mae_resamples(errors, weights) / masked_mae_resamples(own_errors, weights)
        intervals = {"mae_swapped": scores.intervals["mae"], "swap_ratio": opts.bootstrap.interval(ratios)}
        row.update(flatten_intervals(intervals))
    return row


def score_generation(
    report: EvaluationReport, section: str, model: MoLM3D, by_task: dict[str, list[Example]],
    geometry: Geometry | None, opts: EvalOptions,
) -> None:  # fmt: skip
    tokenize: Callable[[str], list[str]] = model.lm.tokenizer.tokenize  # BLEU/METEOR on LM tokens, as the reference
    for task, examples in sorted(by_task.items()):
        desc = f"{section}: {task}"
        decoding = opts.decoding_for(task)
        answers = [g.text for g in generate_answers(model, examples, geometry, opts, desc, decoding=decoding)]
        if task in PROPERTY_TASKS:
            errors = answer_errors(task, answers, [r["label"] for _, r in examples])
            report.add(section, task, scores_from_errors(task, errors, opts.bootstrap))
            if opts.token_ablation and geometry is not None and model.config.molecule_tokens:
                row = token_ablation_row(model, task, examples, geometry, opts, desc, answers, errors)
                report.add(section, task, row, note=ABLATION_NOTE)
        else:
            scores = text_metrics(answers, [r["answer"] for _, r in examples], tokenize=tokenize,
                                  bootstrap=opts.bootstrap)  # fmt: skip
            report.add(section, task, scores, note=REPEAT_NOTE)


@torch.no_grad()
def score_heads(
    report: EvaluationReport, section: str, model: MoLM3D, by_task: dict[str, list[Example]],
    geometry: Geometry, opts: EvalOptions,
) -> None:  # fmt: skip
    """MAE of the encoder's property heads on the examples of each property task they predict."""
    head = model.property_head
    tasks = [t for t in sorted(by_task) if t in HEAD_TASKS and head is not None and t in head.targets]
    molecules = {m["mol_id"]: m for t in tasks for m, _ in by_task[t]}
    ids = list(molecules)
    predictions: dict[str, dict[str, float]] = {}
    bs = max(opts.batch_size, 32)
    progress = Progress(len(ids), f"{section}: molecules", opts)
    for start in range(0, len(ids), bs):
        chunk = ids[start : start + bs]
        features = collate([molecule_features(molecules[i], geometry, model.config.max_atoms) for i in chunk])
        out = {t: v.double().cpu().tolist() for t, v in model.predict_properties(features).items() if t in tasks}
        for j, mol_id in enumerate(chunk):
            predictions[mol_id] = {t: out[t][j] for t in tasks}
        progress.update(len(chunk))
    progress.close()
    for task in tasks:
        values = [predictions[m["mol_id"]][task] for m, _ in by_task[task]]
        labels = [r["label"] for _, r in by_task[task]]
        report.add(section, task, value_scores(task, values, labels, bootstrap=opts.bootstrap), note=HEADS_NOTE)


def heads_status(model: MoLM3D) -> str:
    if model.property_head is None:
        return "none (checkpoint without property heads)"
    if not model.property_head.trained:
        return "untrained (no target statistics): not scored"
    return "scored: " + ", ".join(model.property_head.targets)


@torch.no_grad()
def score_retrieval(report: EvaluationReport, model: MoLM3D, dataset: Dataset, opts: EvalOptions) -> None:
    pairs = [p for p in dataset.retrieval if has_geometry(dataset.molecules[p["mol_id"]], "etkdg")]
    pairs = pairs[: opts.limit] if opts.limit else pairs
    if len(pairs) < 2:
        return
    start = time.perf_counter()
    if not opts.progress and opts.progress_every > 0:
        print(f"eval | retrieval | {len(pairs)} pairs, rerank {opts.rerank}", file=sys.stderr, flush=True)
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
    if not opts.progress and opts.progress_every > 0:
        print(f"eval | retrieval | done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def grid_decodings(base: DecodingOptions) -> list[tuple[str, DecodingOptions]]:
    """DECODING_GRID as DecodingOptions, with `base`'s max_new_tokens and length_penalty."""
    kept = {"max_new_tokens": base.max_new_tokens, "length_penalty": base.length_penalty}
    return [(name, DecodingOptions(**{**PLAIN, **kept, **overrides})) for name, overrides in DECODING_GRID]


def score_decoding_grid(report: EvaluationReport, model: MoLM3D, dataset: Dataset, opts: EvalOptions) -> None:
    """One section per text task (default: caption): a row per decoding of DECODING_GRID."""
    opts = dataclasses.replace(opts, tasks=opts.tasks or ("caption",))
    geometry: Geometry | None = "etkdg" if model.config.molecule_tokens else None
    label = "SMILES conformer" if geometry else "SMILES-only model"
    tokenize: Callable[[str], list[str]] = model.lm.tokenizer.tokenize
    by_task = {t: ex for t, ex in _examples(dataset, opts, geometry).items() if t not in PROPERTY_TASKS}
    # One grid for every text task, its length limit the caption's: the rows the metadata lists.
    grid = grid_decodings(opts.decoding_for("caption"))
    report.metadata["decoding_grid"] = {name: vars(d) for name, d in grid}
    for task, examples in sorted(by_task.items()):
        section = f"decoding comparison: {task} ({label})"
        references = [r["answer"] for _, r in examples]
        for name, decoding in grid:
            start = time.perf_counter()
            gens = generate_answers(model, examples, geometry, opts, f"{section}: {name}", decoding=decoding)
            seconds = time.perf_counter() - start
            tokens = sum(g.num_tokens for g in gens)
            scores = text_metrics([g.text for g in gens], references, tokenize=tokenize, bootstrap=opts.bootstrap)
            report.add(section, name, scores, note=REPEAT_NOTE)
            report.add(section, name, {
                "mean_tokens": tokens / len(gens),
                "truncated": 100.0 * sum(g.finish_reason == "length" for g in gens) / len(gens),
                "tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
            }, note=GRID_NOTE)  # fmt: skip


def evaluate(
    model: MoLM3D, data_dir: str | Path, opts: EvalOptions, smiles_only: MoLM3D | None = None,
    model_id: str = "",
) -> EvaluationReport:  # fmt: skip
    """Every section for `model` (and the SMILES-only baseline when given) on `opts.split`; with
    `opts.decoding_grid`, the decoding comparison on the text tasks instead."""
    dataset = load_dataset(data_dir)
    b = opts.bootstrap
    metadata = {
        "data_dir": str(data_dir), "split": opts.split, "limit": opts.limit, "text_limit": opts.text_limit,
        "decoding": {t or "other tasks": vars(opts.decoding_for(t)) for t in (*TASK_DEFAULTS, "")},
        "model_id": model_id,
        "bootstrap": f"{b.confidence:.0%} percentile intervals over examples, {b.resamples} resamples, seed {b.seed}"
        if b is not None else "off",
    }  # fmt: skip
    report = EvaluationReport(title=f"Evaluation of {model_id or 'model'} on {opts.split}", metadata=metadata)
    if opts.decoding_grid:
        report.title = f"Decoding comparison of {model_id or 'model'} on {opts.split}"
        score_decoding_grid(report, model, dataset, opts)
        return report
    if opts.token_ablation:
        report.metadata["token_ablation"] = f"seed {opts.ablation_seed}"
    report.metadata["geometries"] = list(opts.geometries)
    report.metadata["lm"] = "scored" if opts.lm else "off (--no-lm)"
    if not opts.geometries or set(opts.geometries) - set(GEOMETRY_SECTIONS):
        raise ValueError(f"geometries must be a non-empty subset of {tuple(GEOMETRY_SECTIONS)}, got {opts.geometries}")
    by_geometry = {g: _examples(dataset, opts, g) for g in opts.geometries}
    if opts.lm and model.config.molecule_tokens:
        for geometry, examples in by_geometry.items():
            score_generation(report, GEOMETRY_SECTIONS[geometry][0], model, examples, geometry, opts)
        if opts.wants("retrieval"):
            score_retrieval(report, model, dataset, opts)
    elif opts.lm:
        score_generation(report, SECTION_SMILES_ONLY, model, _examples(dataset, opts, None), None, opts)
    if opts.heads:
        report.metadata["property_heads"] = heads_status(model)
        if model.property_head is not None and model.property_head.trained:
            for geometry, examples in by_geometry.items():
                score_heads(report, GEOMETRY_SECTIONS[geometry][1], model, examples, geometry, opts)
    if smiles_only is not None and opts.lm:
        score_generation(report, SECTION_SMILES_ONLY, smiles_only, _examples(dataset, opts, None), None, opts)
    train_labels: dict[str, list[float]] = defaultdict(list)
    for row in dataset.tasks.get("train", []):
        if row["task"] in PROPERTY_TASKS and row["label"] is not None:
            train_labels[row["task"]].append(row["label"])
    for task, examples in sorted(_examples(dataset, opts, None).items()):
        if task in PROPERTY_TASKS and train_labels[task]:
            labels = [r["label"] for _, r in examples]
            report.add(SECTION_TRAIN_MEAN, task, mean_baseline(train_labels[task], labels, task, opts.bootstrap))
    return report

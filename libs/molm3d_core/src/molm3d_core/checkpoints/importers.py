"""Importers for the official weights: Uni-Mol and the 3D-MoLM stage-1 / stage-2/3 checkpoints.

Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary pickled objects (the one class allowed besides is `argparse.Namespace`, plain data that
Uni-Core checkpoints keep under "args"). Every official key is either mapped to one of our
parameters (with its shape checked) or reported as skipped with the reason; nothing is dropped
silently.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.molm3d import MoLM3D

# Uni-Mol's pretraining heads: not part of the encoder we run.
_UNIMOL_HEADS = ("lm_head.", "pair2coord_proj.", "dist_head.", "classification_heads.")
# Stage-1 / stage-2/3 prefixes (the Lightning module wraps the model as `blip2qformer` / `blip2opt`).
_MOLM_PREFIXES = ("blip2qformer.", "blip2opt.", "blip2llama.")


@dataclass
class ImportReport:
    mapped: dict[str, str] = field(default_factory=dict)  # official key -> our key
    skipped: dict[str, str] = field(default_factory=dict)  # official key -> reason

    def merge(self, other: ImportReport) -> None:
        self.mapped.update(other.mapped)
        self.skipped.update(other.skipped)


def read_state(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """The tensor dict under `key` ("model" for Uni-Mol, "state_dict" for Lightning checkpoints)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(obj, dict) or key not in obj:
        found = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected a dict with a {key!r} entry, found {found}")
    return obj[key]


def map_unimol_key(key: str) -> tuple[str | None, str]:
    """Uni-Core name -> our `encoder.*` name, or (None, reason)."""
    for prefix in ("unimol.", "mol_model."):
        key = key.removeprefix(prefix)
    if key.startswith(_UNIMOL_HEADS):
        return None, "Uni-Mol pretraining head (not used by the encoder)"
    return f"encoder.{key}", ""


def map_molm_key(key: str) -> tuple[str | None, str]:
    """3D-MoLM name (stage 1 or 2/3) -> ours, or (None, reason)."""
    prefix = next((p for p in _MOLM_PREFIXES if key.startswith(p)), None)
    if prefix is None:
        return None, "not a 3D-MoLM model weight"
    rest = key.removeprefix(prefix)
    if rest.endswith("position_ids"):
        return None, "buffer recomputed at load"
    if rest == "temp":
        return None, "learned temperature (our config holds a fixed temperature)"
    if rest == "Qformer.cls.predictions.decoder.weight":
        return None, "tied to the word embeddings"
    if rest == "Qformer.cls.predictions.decoder.bias":  # BERT's head saves its bias under both names
        return None, "tied to cls.predictions.bias"
    if rest.startswith("Qformer."):
        return f"qformer.{rest.removeprefix('Qformer.')}", ""
    if rest == "query_tokens":
        return "qformer.query_tokens", ""
    if rest.startswith(("ln_graph.", "graph_proj.", "text_proj.", "gtm_head.", "llm_proj.")):
        return rest, ""
    if rest.startswith("llm_model.") and ".lora_" in rest:
        return f"lm.model.{rest.removeprefix('llm_model.')}", ""
    if rest.startswith("graph_encoder."):
        return f"encoder.{rest.removeprefix('graph_encoder.')}", ""
    return None, "no counterpart in molm3d"


def map_state(
    state: dict[str, torch.Tensor], mapper, own_shapes: dict[str, torch.Size]
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Apply a key mapper and check every mapped tensor against our parameter shapes."""
    out: dict[str, torch.Tensor] = {}
    report = ImportReport()
    problems = []
    for key, value in state.items():
        ours, reason = mapper(key)
        if ours is None:
            report.skipped[key] = reason
            continue
        if ours not in own_shapes:
            problems.append(f"{key} -> {ours}: no such parameter in the model")
        elif own_shapes[ours] != value.shape:
            problems.append(f"{key}: shape {tuple(value.shape)} but {ours} is {tuple(own_shapes[ours])}")
        else:
            out[ours] = value
            report.mapped[key] = ours
    if problems:
        raise ValueError("official weights do not fit this model configuration:\n  " + "\n  ".join(problems[:20]))
    return out, report


def import_official(
    model: MoLM3D, unimol: str | Path | None = None, checkpoints: Iterable[str | Path] = ()
) -> ImportReport:
    """Load official Uni-Mol weights and 3D-MoLM checkpoints (in the order given: stage 1, then
    stage 2/3, whose Q-Former overrides stage 1's) into `model`."""
    own_shapes = {k: v.shape for k, v in model.state_dict().items()}
    report = ImportReport()
    sources = ([(unimol, "model", map_unimol_key)] if unimol else []) + [
        (c, "state_dict", map_molm_key) for c in checkpoints
    ]
    for path, key, mapper in sources:
        mapped, part = map_state(read_state(path, key), mapper, own_shapes)
        model.load_state_dict(mapped, strict=False)  # copies with a cast to each parameter's dtype
        report.merge(part)
    return report

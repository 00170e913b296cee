"""Loading the checkpoint a stage serves, from its user_config."""

from __future__ import annotations

from typing import Any

from molm3d_core.checkpoints import CheckpointInfo, load_model
from molm3d_core.models import MoLM3D

MODEL_KEYS = ("checkpoint", "device", "dtype", "preset")


def model_settings(config: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(config.get(k) for k in MODEL_KEYS)


def load_stage_model(config: dict[str, Any], with_lm: bool) -> tuple[MoLM3D, CheckpointInfo]:
    """`checkpoint` empty/absent = the library default (MOLM3D_CHECKPOINT, then models/molm3d-small)."""
    return load_model(
        config.get("checkpoint") or None,
        device=config.get("device") or "auto",
        dtype=config.get("dtype") or "auto",
        preset=config.get("preset") or "small",
        with_lm=with_lm,
    )

"""Loading the checkpoint a stage serves, from its user_config."""

from __future__ import annotations

import os
from typing import Any

import torch

from molm3d_core.checkpoints import CheckpointInfo, load_model
from molm3d_core.models import MoLM3D

MODEL_KEYS = ("checkpoint", "device", "dtype", "preset")


def model_settings(config: dict[str, Any]) -> tuple[Any, ...]:
    """What decides which model a stage holds: a change means reloading it."""
    return (
        config.get("checkpoint") or None,
        config.get("device") or "auto",
        config.get("dtype") or "auto",
        config.get("preset") or "small",
        int(config.get("num_threads") or 0),
    )


def load_stage_model(config: dict[str, Any], with_lm: bool) -> tuple[MoLM3D, CheckpointInfo]:
    """`checkpoint` empty/absent = the library default (MOLM3D_CHECKPOINT, then models/molm3d-small).

    `num_threads`: torch CPU threads of this replica (0 = every core of the machine). Ray sets
    OMP_NUM_THREADS from a replica's num_cpus (1 for fractions), which would leave a CPU-bound LM on
    one core."""
    threads = int(config.get("num_threads", 0) or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return load_model(
        config.get("checkpoint") or None,
        device=config.get("device") or "auto",
        dtype=config.get("dtype") or "auto",
        preset=config.get("preset") or "small",
        with_lm=with_lm,
    )

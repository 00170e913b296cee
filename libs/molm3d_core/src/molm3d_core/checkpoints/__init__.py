"""Checkpoint I/O (our format) and importers for the official Uni-Mol / 3D-MoLM weights."""

from .importers import ImportReport, import_official
from .io import CheckpointInfo, default_checkpoint, load_model, read_checkpoint_config, save_checkpoint

__all__ = [
    "CheckpointInfo",
    "ImportReport",
    "default_checkpoint",
    "import_official",
    "load_model",
    "read_checkpoint_config",
    "save_checkpoint",
]

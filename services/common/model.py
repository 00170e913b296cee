"""Stages that serve a checkpoint: which model, on which device, with how many CPU threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import TYPE_CHECKING, Any

from .stage import Stage

if TYPE_CHECKING:  # `model_settings` serves torch-free stages too
    from molm3d_core.checkpoints import CheckpointInfo
    from molm3d_core.models import MoLM3D


def model_settings(config: dict[str, Any]) -> tuple[Any, ...]:
    """What decides which model a stage holds: a change means reloading it."""
    return (config.get("checkpoint") or None, config.get("device") or "auto", config.get("dtype") or "auto",
            config.get("preset") or "small")  # fmt: skip


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def release_freed_memory() -> None:
    """Give memory freed by the last model call (KV cache, activations) back to the OS. glibc keeps it
    in the worker thread's arena otherwise: measured, an LM replica held 340 MiB more after a batch
    of 32 captions than before it. No-op where there is no malloc_trim (not glibc)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class ModelStage(Stage):
    """A stage holding a checkpoint (`self.model`, `self.info`), reloaded when its settings change.

    `checkpoint` empty/absent = the library default ($MOLM3D_CHECKPOINT, then models/molm3d-small).
    `num_threads`: torch CPU threads of this replica (0 = every core but one: the other stages and
    Ray's processes need one, and an OpenMP team that shares every core with them stalls at each
    barrier; measured on 2 cores, the LM replica decoded a batch of 32 in 32 s with 1 thread and
    41 s with 2).
    """

    with_lm = False  # which parts of the model the stage holds
    with_molecule = True
    _settings: tuple[Any, ...] | None = None
    model: MoLM3D
    info: CheckpointInfo

    def _configure_model(self, config: dict[str, Any]) -> bool:
        """Apply the thread count; (re)load the model when needed. True when a model was loaded."""
        import torch

        from molm3d_core.checkpoints import load_model

        torch.set_num_threads(int(config.get("num_threads") or 0) or max(1, (os.cpu_count() or 1) - 1))
        settings = model_settings(config)
        if settings == self._settings:
            return False
        self.model, self.info = load_model(settings[0], device=settings[1], dtype=settings[2], preset=settings[3],
                                           with_lm=self.with_lm, with_molecule=self.with_molecule)  # fmt: skip
        self._settings = settings
        return True

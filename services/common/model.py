"""Stages that serve a checkpoint: which model, on which device, with how many CPU threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import os
import re
from typing import TYPE_CHECKING, Any, Literal

from .settings import StageSettings, setting
from .stage import Stage

if TYPE_CHECKING:  # ModelSettings serves torch-free stages too
    from molm3d_core.checkpoints import CheckpointInfo
    from molm3d_core.models import MoLM3D

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclasses.dataclass(frozen=True)
class ModelSettings(StageSettings):
    """The checkpoint a stage serves, where, and with how many CPU threads (user_config keys).

    `checkpoint` "" = the library default ($MOLM3D_CHECKPOINT, then models/molm3d-small); `preset` is the
    architecture of the untrained stand-in when there is no checkpoint at all. `device`: auto | cpu |
    cuda | cuda:N. `dtype`: auto = bf16 on GPU, fp32 on CPU. `num_threads`: torch CPU threads, 0 =
    every core but one (see ModelStage).
    """

    checkpoint: str = ""
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    preset: str = "small"
    num_threads: int = setting(0, ge=0)

    def __post_init__(self) -> None:
        if not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def model_key(self) -> tuple[str | None, str, str, str]:
        """What decides which model a stage holds, (checkpoint or None, device, dtype, preset): a change
        means reloading it."""
        return (self.checkpoint or None, self.device, self.dtype, self.preset)

    @property
    def torch_threads(self) -> int:
        return self.num_threads or max(1, (os.cpu_count() or 1) - 1)


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
    _model_key: tuple[Any, ...] | None = None
    model: MoLM3D
    info: CheckpointInfo

    def _configure_model(self, settings: ModelSettings) -> bool:
        """Apply the thread count; (re)load the model when needed. True when a model was loaded."""
        import torch

        from molm3d_core.checkpoints import load_model

        torch.set_num_threads(settings.torch_threads)
        if settings.model_key == self._model_key:
            return False
        checkpoint, device, dtype, preset = settings.model_key
        self.model, self.info = load_model(checkpoint, device=device, dtype=dtype, preset=preset,
                                           with_lm=self.with_lm, with_molecule=self.with_molecule)  # fmt: skip
        self._model_key = settings.model_key
        return True

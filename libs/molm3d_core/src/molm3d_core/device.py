"""Device and dtype choice: the config says which; bf16 on GPU, fp32 on CPU unless told otherwise."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; an explicit `cuda` without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX); without them bf16 is emulated
    and measured 10-50x slower than fp32 for training here (AVX2-only EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_autocast(name: str, device: torch.device) -> bool:
    """Whether to run under bf16 autocast: `auto` = on GPU, and on CPUs with native bf16."""
    if name == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    if name not in ("bf16", "none"):
        raise ValueError(f"unknown autocast {name!r}; choose auto, bf16 or none")
    return name == "bf16"

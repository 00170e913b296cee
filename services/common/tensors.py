"""Tensors on the wire: molm3d.v1.Tensor = shape + dtype + packed little-endian bytes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from molm3d.v1 import common_pb2

if TYPE_CHECKING:  # torch-free stages (retrieval) read tensors as numpy arrays
    import torch

_WIRE = {"float32": "<f4", "float16": "<f2", "bfloat16": "<i2"}  # numpy has no bfloat16: ship its bits


def to_proto(t: torch.Tensor) -> common_pb2.Tensor:
    import torch

    t = t.detach().cpu().contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _WIRE:
        raise ValueError(f"unsupported tensor dtype {dtype}; expected one of {sorted(_WIRE)}")
    arr = (t.view(torch.int16) if dtype == "bfloat16" else t).numpy()
    return common_pb2.Tensor(shape=list(t.shape), dtype=dtype, data=arr.astype(_WIRE[dtype], copy=False).tobytes())


def _wire_array(msg: common_pb2.Tensor) -> np.ndarray:
    """The packed values in native byte order (bfloat16 as its int16 bits); ValueError for an unknown
    dtype, data that does not fit the shape, or a NaN / infinite value (no stage makes one: it would
    only turn into garbage text or NaN scores downstream)."""
    if msg.dtype not in _WIRE:
        raise ValueError(f"unsupported tensor dtype {msg.dtype!r}; expected one of {sorted(_WIRE)}")
    shape = tuple(msg.shape)
    itemsize = np.dtype(_WIRE[msg.dtype]).itemsize
    if any(d < 0 for d in shape) or len(msg.data) != math.prod(shape) * itemsize:
        raise ValueError(
            f"tensor of shape {shape} and dtype {msg.dtype} needs {math.prod(shape) * itemsize} bytes, "
            f"got {len(msg.data)}"
        )
    arr = np.frombuffer(msg.data, dtype=_WIRE[msg.dtype])
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=True).reshape(shape)
    # bfloat16 bits: NaN and infinity have every exponent bit set
    finite = (arr & 0x7F80) != 0x7F80 if msg.dtype == "bfloat16" else np.isfinite(arr)
    if not finite.all():
        raise ValueError("tensor contains NaN or infinite values")
    return arr


def from_proto(msg: common_pb2.Tensor) -> torch.Tensor:
    """The tensor, in its wire dtype; ValueError as `array_from_proto`."""
    import torch

    t = torch.from_numpy(_wire_array(msg))
    return t.view(torch.bfloat16) if msg.dtype == "bfloat16" else t


def array_from_proto(msg: common_pb2.Tensor) -> np.ndarray:
    """The values as a float32 numpy array, without torch; ValueError for an unknown dtype or data that
    does not fit the shape."""
    arr = _wire_array(msg)
    if msg.dtype == "bfloat16":  # bfloat16 is the upper half of a float32
        return (arr.astype(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)

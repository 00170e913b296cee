"""Tensors on the wire: what one stage packs, the next unpacks (torch stages and the torch-free one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from molm3d.v1 import common_pb2

from molm3d_services.common.tensors import array_from_proto, from_proto, to_proto


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_and_numpy_view_agree(dtype):
    t = (torch.randn(3, 5) * 100).to(dtype)
    msg = to_proto(t)
    assert msg.dtype == str(dtype).removeprefix("torch.") and list(msg.shape) == [3, 5]
    back = from_proto(msg)
    assert back.dtype == dtype and torch.equal(back, t)
    arr = array_from_proto(msg)
    assert arr.dtype == np.float32 and arr.shape == (3, 5)
    np.testing.assert_array_equal(arr, t.float().numpy())


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (common_pb2.Tensor(shape=[2], dtype="int64", data=b"\0" * 16), "unsupported tensor dtype"),
        (common_pb2.Tensor(shape=[2, 3], dtype="float32", data=b"\0" * 20), "needs 24 bytes, got 20"),
    ],
)
def test_malformed_tensors_are_refused_with_the_reason(msg, reason):
    for read in (from_proto, array_from_proto):
        with pytest.raises(ValueError, match=reason):
            read(msg)

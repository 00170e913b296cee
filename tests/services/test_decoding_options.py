"""services/common/decoding.py without a stack: proto DecodingOptions <-> molm3d_core's, unset fields
taking the task's defaults, and INVALID_ARGUMENT-typed errors naming the field."""

from __future__ import annotations

import pytest
from molm3d.v1 import common_pb2

from molm3d_core.decoding import DecodingOptions, default_decoding
from molm3d_core.errors import ErrorCode, MoleculeError
from molm3d_services.common.decoding import decoding_proto, resolve_decoding


def test_unset_sampling_fields_are_greedy_with_the_task_defaults():
    d = resolve_decoding(common_pb2.DecodingOptions(), "caption")
    assert d == default_decoding("caption")
    assert d.temperature == 0.0 and d.top_p == 1.0 and d.seed is None and d.stop == () and not d.sampling


def test_sampling_fields_and_stop_strings_are_taken():
    proto = common_pb2.DecodingOptions(temperature=0.5, top_p=0.25, seed=0, stop=["\n\n", "END"])
    d = resolve_decoding(proto, "ask")
    assert (d.temperature, d.top_p, d.seed, d.stop) == (0.5, 0.25, 0, ("\n\n", "END"))  # seed 0 is a seed
    assert resolve_decoding(common_pb2.DecodingOptions(seed=-(2**63)), "ask").seed == -(2**63)


@pytest.mark.parametrize(
    "options",
    [
        DecodingOptions(),
        # values a float32 holds exactly: the proto's floats are float32
        DecodingOptions(repetition_penalty=1.25, temperature=1.5, top_p=0.5, seed=2**63 - 1, stop=("a", "b")),
        DecodingOptions(num_beams=3, stop=("x",)),
    ],
)
def test_proto_round_trip_sets_every_field(options):
    proto = decoding_proto(options)
    assert proto.HasField("seed") == (options.seed is not None)
    assert proto.HasField("no_repeat_ngram_size")
    assert resolve_decoding(proto, "") == options  # no field left to a default


@pytest.mark.parametrize(
    ("proto", "message"),
    [
        (common_pb2.DecodingOptions(temperature=-1), "decoding.temperature must be in 0..2"),
        (common_pb2.DecodingOptions(temperature=float("nan")), "decoding.temperature must be in 0..2"),
        (common_pb2.DecodingOptions(temperature=3), "decoding.temperature must be in 0..2"),
        (common_pb2.DecodingOptions(top_p=-0.5), r"decoding.top_p must be in \(0, 1\]"),
        (common_pb2.DecodingOptions(top_p=1.5), r"decoding.top_p must be in \(0, 1\]"),
        (common_pb2.DecodingOptions(temperature=1, num_beams=2), "decoding.temperature > 0 samples and needs num_b"),
        (common_pb2.DecodingOptions(stop=["a"] * 5), "decoding.stop has 5 strings; the limit is 4"),
        (common_pb2.DecodingOptions(stop=["a", ""]), r"decoding.stop\[1\] must have 1..64 characters, got 0"),
    ],
)
def test_bad_values_are_invalid_requests_naming_the_field(proto, message):
    with pytest.raises(MoleculeError, match=message) as err:
        resolve_decoding(proto, "ask")
    assert err.value.code is ErrorCode.INVALID_REQUEST

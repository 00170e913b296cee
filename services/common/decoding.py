"""A request's decoding options: proto -> molm3d_core DecodingOptions with each task's defaults, and
INVALID_ARGUMENT naming the field and its range for anything else, before any model work."""

from __future__ import annotations

from typing import Any

from molm3d.v1 import common_pb2

from molm3d_core.decoding import DecodingOptions, default_decoding

from .stage import invalid_request

MAX_NO_REPEAT_NGRAM = 16


def resolve_decoding(d: common_pb2.DecodingOptions, task: str) -> DecodingOptions:
    """Fields left at 0 / unset take `task`'s default (`default_decoding`: a Caption's, an Ask's); the
    values given are checked by DecodingOptions itself, plus this service's n-gram bound.

    temperature 0 (unset) is greedy, top_p 0 (unset) is 1 (off), seed counts only when set, and the
    stop strings are taken as given (DecodingOptions bounds their number and length)."""
    given: dict[str, Any] = {
        name: getattr(d, name)
        for name in ("max_new_tokens", "num_beams", "repetition_penalty", "length_penalty", "temperature", "top_p")
        if getattr(d, name)  # 0: unset (NaN and negatives are given, and refused below)
    }
    if d.HasField("no_repeat_ngram_size"):
        if not 0 <= d.no_repeat_ngram_size <= MAX_NO_REPEAT_NGRAM:
            raise invalid_request(
                f"decoding.no_repeat_ngram_size must be in 0..{MAX_NO_REPEAT_NGRAM} (0: off), "
                f"got {d.no_repeat_ngram_size}"
            )
        given["no_repeat_ngram_size"] = d.no_repeat_ngram_size
    if d.HasField("seed"):
        given["seed"] = d.seed
    if d.stop:
        given["stop"] = tuple(d.stop)
    try:
        return default_decoding(task, **given)
    except ValueError as err:  # its message starts with the field's name
        raise invalid_request(f"decoding.{err}") from None


def decoding_proto(options: DecodingOptions) -> common_pb2.DecodingOptions:
    """Every field set (the seed when there is one): the next stage needs no defaults of its own."""
    fields = vars(options).copy()
    if fields["seed"] is None:
        del fields["seed"]
    return common_pb2.DecodingOptions(**fields)

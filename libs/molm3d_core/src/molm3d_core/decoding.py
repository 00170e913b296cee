"""How the LM decodes: one dataclass, the per-task defaults that the CLI, the services and eval share,
and the stop-string helpers that the decoder and streaming share.

Torch-free, so that argument parsers and service front ends can read the defaults without importing
the model code.

Sampling (`temperature` > 0) follows transformers' order: the repetition penalty, the n-gram block and
the `<mol>` suppression first, then the temperature, then nucleus (`top_p`) filtering. Each sequence
draws from its own random stream, derived from its seed and the index of the token being drawn, so its
tokens depend neither on its batch neighbours nor on when it joined the batch.

Stop strings are matched in the answer's text as the user reads it: the generated tokens decoded with
special tokens skipped and leading whitespace stripped. The text then ends before the earliest
occurrence (and is stripped, as every answer is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_TEMPERATURE = 2.0  # OpenAI's range: 0..2
MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 64
INT64 = (-(2**63), 2**63 - 1)  # a seed travels in an int64 proto field


@dataclass
class DecodingOptions:
    num_beams: int = 1
    max_new_tokens: int = 64
    repetition_penalty: float = 1.0  # > 0; 1.0 = off; applies to generated tokens only (the prompt is embeddings)
    length_penalty: float = 1.0  # beam search only: exponent of the length that divides a beam's log-probability
    # > 0: no n-gram of this many tokens occurs twice in the generated tokens (transformers'
    # NoRepeatNGramLogitsProcessor; the prompt is not seen, it enters as embeddings). 0 = off.
    no_repeat_ngram_size: int = 4  # measured best on captions (model card: decoding comparison)
    temperature: float = 0.0  # 0 = greedy; > 0 (up to 2) = sample from softmax(logits / temperature)
    top_p: float = 1.0  # sampling only: draw from the smallest set of tokens whose probability reaches top_p
    seed: int | None = None  # sampling only: the same seed, prompt and options give the same tokens; None = random
    # The text ends before the first of these (finish_reason "stop"); a str is one stop string.
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Each message starts with the field's name: the services prefix it with "decoding.".
        for name in ("num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.repetition_penalty < math.inf:  # also refuses NaN
            raise ValueError(f"repetition_penalty must be finite and > 0 (1.0 = off), got {self.repetition_penalty}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if isinstance(self.no_repeat_ngram_size, bool) or not isinstance(self.no_repeat_ngram_size, int):
            raise ValueError(f"no_repeat_ngram_size must be an integer, got {self.no_repeat_ngram_size!r}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        self._check_sampling()
        self._check_stop()

    def _check_sampling(self) -> None:
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:  # also refuses NaN
            raise ValueError(f"temperature must be in 0..{MAX_TEMPERATURE:g} (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int):
                raise ValueError(f"seed must be an integer, got {self.seed!r}")
            if not INT64[0] <= self.seed <= INT64[1]:
                raise ValueError(f"seed must be a 64-bit signed integer ({INT64[0]}..{INT64[1]}), got {self.seed}")
        if self.sampling and self.num_beams > 1:
            raise ValueError(
                f"temperature > 0 samples and needs num_beams 1; got temperature {self.temperature} "
                f"with num_beams {self.num_beams}"
            )

    def _check_stop(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        if not isinstance(self.stop, list | tuple) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop must be a list of strings, got {self.stop!r}")
        self.stop = tuple(self.stop)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop has {len(self.stop)} strings; the limit is {MAX_STOP_STRINGS}")
        for i, s in enumerate(self.stop):
            if not 1 <= len(s) <= MAX_STOP_CHARS:
                raise ValueError(f"stop[{i}] must have 1..{MAX_STOP_CHARS} characters, got {len(s)}")

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


# Task -> overrides of the DecodingOptions defaults for that task. Captions are free text: a repetition
# penalty of 1.2 on top of the 4-gram block stops the locant counting ("2,3,4,...,40,") that the block
# alone lets through (model card: captions with and without it). Answers keep 1.0: the penalty would
# push a number away from repeating its own digits.
# Captions are longer than answers, so they may run to 128 new tokens where an answer stops at 64.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"caption": {"max_new_tokens": 128, "repetition_penalty": 1.2}}


def default_decoding(task: str, **overrides: Any) -> DecodingOptions:
    """The decoding of `task` (caption, ask, an eval task name, ...) with `overrides` on top."""
    return DecodingOptions(**{**TASK_DEFAULTS.get(task, {}), **overrides})


# -- seeds ---------------------------------------------------------------------------------------------

_MASK64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, step: int) -> int:
    """The seed (0..2**64-1) of the draw of token `step` of a sequence seeded with `seed`: every bit
    mixed, so nearby seeds and steps give unrelated streams (torch's CPU generator reads 32 bits)."""
    return _splitmix64((seed & _MASK64) ^ _splitmix64(step))


# -- stop strings -------------------------------------------------------------------------------------


def find_stop(text: str, stop: Sequence[str]) -> int:
    """The index of the earliest occurrence of any of `stop` in `text`, or -1."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(found) if found else -1


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """`text` before the earliest stop string, or None when none occurs."""
    i = find_stop(text, stop)
    return None if i < 0 else text[:i]


def stop_safe_prefix(text: str, stop: Sequence[str]) -> str:
    """The part of a growing `text` that no stop string can take back: cut before a stop string that
    occurs, and without any trailing piece that could still grow into one (for streaming). Whatever
    more is generated, the final text (cut at its earliest stop string) starts with this prefix, as
    long as the text only grows; a caller that strips its final text should rstrip this too."""
    i = find_stop(text, stop)
    if i >= 0:
        return text[:i]
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), hold, -1):  # longest first
            if text.endswith(s[:k]):
                hold = k
                break
    return text[: len(text) - hold]

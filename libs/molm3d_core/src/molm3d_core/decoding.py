"""How the LM decodes: one dataclass, and the per-task defaults that the CLI, the services and eval share.

Torch-free, so that argument parsers and service front ends can read the defaults without importing
the model code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class DecodingOptions:
    num_beams: int = 1
    max_new_tokens: int = 64
    repetition_penalty: float = 1.0  # > 0; 1.0 = off; applies to generated tokens only (the prompt is embeddings)
    length_penalty: float = 1.0  # beam search only: exponent of the length that divides a beam's log-probability
    # > 0: no n-gram of this many tokens occurs twice in the generated tokens (transformers'
    # NoRepeatNGramLogitsProcessor; the prompt is not seen, it enters as embeddings). 0 = off.
    no_repeat_ngram_size: int = 4  # measured best on captions (model card: decoding comparison)

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


# Task -> overrides of the DecodingOptions defaults for that task. Captions are free text: a repetition
# penalty of 1.2 on top of the 4-gram block stops the locant counting ("2,3,4,...,40,") that the block
# alone lets through (model card: captions with and without it). Answers keep 1.0: the penalty would
# push a number away from repeating its own digits.
# Captions are longer than answers, so they may run to 128 new tokens where an answer stops at 64.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"caption": {"max_new_tokens": 128, "repetition_penalty": 1.2}}


def default_decoding(task: str, **overrides: Any) -> DecodingOptions:
    """The decoding of `task` (caption, ask, an eval task name, ...) with `overrides` on top."""
    return DecodingOptions(**{**TASK_DEFAULTS.get(task, {}), **overrides})

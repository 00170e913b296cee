"""Continuous batching for greedy and sampled decoding: sequences join and leave the running batch
between steps.

Iteration-level scheduling (Orca, OSDI '22; vLLM): instead of closing a batch and decoding it until
its longest member ends, every step decodes one token for each running sequence; a sequence that ends
(EOS, its token limit, or its caller gave up) leaves at once, and a waiting one joins as soon as its
prompt is prefilled. The running batch is left-padded: a joining prefill's KV cache is padded to the
batch's length and concatenated along the batch dimension, and the columns only padding uses are
trimmed when the sequences that needed them leave.

Greedy and sampling (beam search stays with transformers' `generate`). Greedy tokens are those of
`generate(do_sample=False)` with the same options: the repetition penalty and the n-gram block see
the generated tokens only (the prompt enters as embeddings), and `<mol>` is never generated.
Sampling (temperature > 0) applies the same processors, then transformers' temperature and top-p
warpers, and draws from the sequence's own `torch.Generator`, reseeded for each token from the
sequence's seed and the token's index: a sequence's tokens do not depend on its batch neighbours, on
when it joined, or on a prefill that failed and was retried (up to float noise in the logits).

A sequence with stop strings ends as soon as its text contains one (finish_reason "stop"): its tokens
are decoded after each step, only for such sequences (`decoding.py` says how they are matched).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from ..decoding import DecodingOptions, find_stop, step_seed

if TYPE_CHECKING:
    from .lm import Generation, MolLM


@dataclass(eq=False)
class Sequence:
    """One prompt being decoded."""

    embeds: torch.Tensor  # (T, H): the prompt's embeddings, molecule tokens spliced in
    decoding: DecodingOptions
    on_token: Callable[[Sequence], None] | None = None  # after each new token (streaming); decoder thread
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "eos" | "length" | "stop" | "cancelled"
    # Sampling: the seed of this sequence's draws. None: decoding.seed, or a fresh random one without it
    # (set at creation, so a retried prefill draws the same tokens).
    seed: int | None = None
    # (n-1)-gram prefix -> tokens that followed it, for the n-gram block
    _ngrams: dict[tuple[int, ...], set[int]] = field(default_factory=dict, repr=False)
    _rng: torch.Generator | None = field(default=None, init=False, repr=False)  # created at the first draw

    def __post_init__(self) -> None:
        if self.seed is None:
            self.seed = self.decoding.seed if self.decoding.seed is not None else secrets.randbits(63)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """The caller gave up: the sequence leaves the batch before the next step."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"

    def banned(self) -> set[int]:
        """Tokens the n-gram block forbids next (transformers' NoRepeatNGramLogitsProcessor)."""
        n = self.decoding.no_repeat_ngram_size
        if n <= 0 or len(self.tokens) + 1 < n:
            return set()
        return self._ngrams.get(tuple(self.tokens[len(self.tokens) - n + 1 :]), set())

    def _append(self, token: int) -> None:
        self.tokens.append(token)
        n = self.decoding.no_repeat_ngram_size
        if n > 0 and len(self.tokens) >= n:
            gram = self.tokens[-n:]
            self._ngrams.setdefault(tuple(gram[:-1]), set()).add(gram[-1])


@dataclass
class StepStats:
    """What the last call did, for the scheduler's service-time estimates."""

    batch_size: int = 0
    seconds: float = 0.0


class ContinuousDecoder:
    """The running batch of one LM. Not thread-safe: one thread calls `add` and `step`."""

    def __init__(self, lm: MolLM, max_batch_size: int = 32) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.lm, self.max_batch_size = lm, max_batch_size
        self.eos, self.mol_token_id = lm.tokenizer.eos_token_id, lm.mol_token_id
        self.running: list[Sequence] = []
        self._cache = None  # transformers Cache over the running batch: per layer (B, kv_heads, L, head_dim)
        self._mask: torch.Tensor | None = None  # (B, L): 1 = a real token
        self._next_position: torch.Tensor | None = None  # (B,): position id of each row's next input
        self._last: torch.Tensor | None = None  # (B,): each row's newest token, not yet fed to the model
        self.last_step, self.last_prefill = StepStats(), StepStats()

    @property
    def free_slots(self) -> int:
        return self.max_batch_size - len(self.running)

    @torch.no_grad()
    def add(self, seqs: list[Sequence]) -> list[Sequence]:
        """Prefill `seqs` (at most `free_slots`) as one batch and pick each one's first token; those not
        already finished join the running batch. Returns the ones that finished (a first token of EOS or
        with a stop string, or a limit of one token)."""
        if not seqs:
            return []
        if len(seqs) > self.free_slots:
            raise ValueError(f"{len(seqs)} sequences do not fit the {self.free_slots} free slots")
        start = time.perf_counter()
        model = self.lm.model
        lengths = [s.embeds.shape[0] for s in seqs]
        width = max(lengths)
        embeds = torch.stack([F.pad(s.embeds, (0, 0, width - n, 0)) for s, n in zip(seqs, lengths, strict=True)])
        mask = torch.stack([F.pad(torch.ones(n, dtype=torch.long), (width - n, 0)) for n in lengths]).to(embeds.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as transformers' generate
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = self._choose(out.logits[:, -1], seqs)
        self.last_prefill = StepStats(len(seqs), time.perf_counter() - start)
        keep = self._advance(seqs, first)
        if keep:
            idx = torch.tensor(keep, device=mask.device)
            out.cache.batch_select_indices(idx)
            self._join(
                [seqs[i] for i in keep],
                out.cache,
                mask[idx],
                torch.tensor(lengths, device=mask.device)[idx],
                first[idx],
            )
        return [s for i, s in enumerate(seqs) if i not in keep]

    @torch.no_grad()
    def step(self) -> list[Sequence]:
        """One new token for every running sequence. Returns the sequences that finished (EOS, their
        limit, a stop string, or cancelled), which have left the batch."""
        gone = [i for i, s in enumerate(self.running) if s.done]  # cancelled since the last step
        cancelled = [self.running[i] for i in gone]
        self._retire(gone)
        if not self.running:
            return cancelled
        start = time.perf_counter()
        model = self.lm.model
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self.running), 1)], dim=1)
        embeds = model.get_input_embeddings()(self._last[:, None])
        out = model(
            inputs_embeds=embeds,
            attention_mask=self._mask,
            position_ids=self._next_position[:, None],
            cache=self._cache,
            use_cache=True,
        )
        self._cache = out.cache
        self._next_position = self._next_position + 1
        tokens = self._choose(out.logits[:, -1], self.running)
        self.last_step = StepStats(len(self.running), time.perf_counter() - start)
        keep = self._advance(self.running, tokens)
        finished = [s for i, s in enumerate(self.running) if i not in keep]
        self._last = tokens
        self._retire([i for i in range(len(self.running)) if i not in keep])
        return cancelled + finished

    # -- internals ------------------------------------------------------------------------------------

    def _choose(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Next tokens (B,) after the penalties, as transformers' logits processors apply them: the best
        one (greedy), or a draw for the rows that sample."""
        scores = logits.float()  # generate scores in float32 too
        scores[:, self.mol_token_id] = -torch.inf
        for i, s in enumerate(seqs):
            if s.decoding.repetition_penalty != 1.0 and s.tokens:
                seen = torch.tensor(sorted(set(s.tokens)), device=scores.device)
                row = scores[i, seen]
                p = s.decoding.repetition_penalty
                scores[i, seen] = torch.where(row < 0, row * p, row / p)
            banned = s.banned()
            if banned:
                scores[i, list(banned)] = -torch.inf
        tokens = scores.argmax(-1)
        for i, s in enumerate(seqs):
            if s.decoding.sampling:
                tokens[i] = self._sample(scores[i], s)
        return tokens

    @staticmethod
    def _sample(scores: torch.Tensor, s: Sequence) -> torch.Tensor:
        """One draw from (V,) processed scores, from the sequence's generator seeded for this token."""
        probs = sampling_probs(scores, s.decoding.temperature, s.decoding.top_p)
        if s._rng is None or s._rng.device != probs.device:
            s._rng = torch.Generator(device=probs.device)
        s._rng.manual_seed(step_seed(s.seed, len(s.tokens)))
        return torch.multinomial(probs, 1, generator=s._rng)[0]

    def _advance(self, seqs: list[Sequence], tokens: torch.Tensor) -> list[int]:
        """Append each row's token; the indices of the rows still running."""
        keep = []
        for i, (s, token) in enumerate(zip(seqs, tokens.tolist(), strict=True)):
            if s.done:  # cancelled while this step ran
                continue
            s._append(token)
            if token == self.eos:
                s.finish_reason = "eos"
            elif s.decoding.stop and find_stop(self.lm.answer_text(s.tokens), s.decoding.stop) >= 0:
                s.finish_reason = "stop"
            elif len(s.tokens) >= s.decoding.max_new_tokens:
                s.finish_reason = "length"
            if s.on_token is not None:
                s.on_token(s)
            if not s.done:
                keep.append(i)
        return keep

    def _join(
        self, seqs: list[Sequence], cache, mask: torch.Tensor, positions: torch.Tensor, last: torch.Tensor
    ) -> None:
        if not self.running:
            self.running, self._cache, self._mask, self._next_position, self._last = seqs, cache, mask, positions, last
            return
        width = max(self._mask.shape[1], mask.shape[1])

        def left_pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            short = width - t.shape[-dim_from_end]
            return F.pad(t, (0, 0) * (dim_from_end - 1) + (short, 0)) if short else t

        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([left_pad(mine.keys, 2), left_pad(theirs.keys, 2)])
            mine.values = torch.cat([left_pad(mine.values, 2), left_pad(theirs.values, 2)])
        self._mask = torch.cat([left_pad(self._mask, 1), left_pad(mask, 1)])
        self._next_position = torch.cat([self._next_position, positions])
        self._last = torch.cat([self._last, last])
        self.running = self.running + seqs

    def _retire(self, rows: list[int]) -> None:
        """Drop `rows` from the batch, then the leading columns that no remaining row uses."""
        if not rows:
            return
        keep = [i for i in range(len(self.running)) if i not in set(rows)]
        self.running = [self.running[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._next_position = self._last = None
            return
        idx = torch.tensor(keep, device=self._mask.device)
        self._cache.batch_select_indices(idx)
        self._mask, self._next_position, self._last = self._mask[idx], self._next_position[idx], self._last[idx]
        unused = int(self._mask.argmax(dim=1).min())  # the first real column of the longest row
        if unused:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., unused:, :], layer.values[..., unused:, :]
            self._mask = self._mask[:, unused:]


def sampling_probs(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(..., V) processed scores -> the probabilities a draw uses: transformers' TemperatureLogitsWarper,
    then TopPLogitsWarper (the smallest set of tokens whose probability reaches top_p; the best one is
    always kept), renormalised. -inf scores (suppressed, blocked) get 0."""
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p < 1.0:
        ascending, order = probs.sort(dim=-1)
        drop = ascending.cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        probs = probs.scatter(-1, order, ascending.masked_fill(drop, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def decode_all(lm: MolLM, seqs: list[Sequence]) -> list[Generation]:
    """Decode `seqs` to the end as one continuous batch (the offline path: CLI, eval)."""
    decoder = ContinuousDecoder(lm, max_batch_size=max(1, len(seqs)))
    decoder.add(seqs)
    while decoder.running:
        decoder.step()
    return [lm.generation(s) for s in seqs]

"""LM stage (large GPU): prompt + molecule tokens -> text, continuously batched, EOS-stopped, streamed
on request.

Greedy requests (the default) join one running batch between decoding steps and leave it as soon as
they end (`scheduler.DecodeLoop` over the library's continuous decoder): a short answer never waits
for a long caption, and a new request starts decoding within a step or two. Generate and
GenerateStream share that batch; the stream sends text as tokens arrive. Beam search (reference-style
decoding) runs one request group at a time through transformers' `generate`, beside the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from molm3d.v1 import lm_pb2
from ray import serve

from molm3d_core.decoding import stop_safe_prefix
from molm3d_core.models import DecodingOptions, Generation
from molm3d_core.models.continuous import ContinuousDecoder, Sequence

from ..common.decoding import resolve_decoding
from ..common.model import ModelSettings, ModelStage, release_freed_memory
from ..common.settings import setting
from ..common.stage import invalid_request, rpc, rpc_stream
from ..common.tensors import from_proto
from .scheduler import DecodeLoop

log = logging.getLogger("ray.serve")


@dataclass
class _Job:
    prompt: str
    mol: torch.Tensor | None  # (n_molecules, Q, H); None for a text-only prompt or a SMILES-only model
    decoding: DecodingOptions
    prompt_tokens: int  # the prompt's length in tokens, molecule placeholders included (usage counts)


@dataclass(frozen=True)
class LMSettings(ModelSettings):
    """user_config of the LM deployment: the model (ModelSettings), the continuous batch, request limits."""

    max_batch_size: int = setting(32, ge=1)  # sequences decoding together; keep max_ongoing_requests >= this
    max_prefill: int = setting(4, ge=1)  # sequences joining per step
    # CPU priority (Unix nice, 0-19) of the decoding thread. On a CPU-only machine decoding would take
    # every cycle it can get: a lower priority lets the conformer and encoder stages run the moment a
    # request arrives, which cuts its time to first token and costs the batch little. 0 on a GPU.
    decode_nice: int = setting(0, ge=0, le=19)
    max_new_tokens_limit: int = setting(512, ge=1)
    max_beams: int = setting(5, ge=1)
    max_instruction_chars: int = setting(2_000, ge=1)  # the question, the system prompt and the history together
    max_molecules: int = setting(8, ge=1)  # molecules in one prompt


@serve.deployment(name="LM")
class LMStage(ModelStage):
    stage = "lm"
    with_lm = True
    with_molecule = False  # molecule tokens arrive projected, from the encoder stage

    def __init__(self) -> None:
        self.decode: DecodeLoop | None = None
        self._beams: asyncio.Lock | None = None  # made on the serving loop
        self.reconfigure({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.settings = s = LMSettings.from_user_config(config)
        self._init_stage(s.token_env)
        loaded = self._configure_model(s)
        if loaded or self.decode is None:
            if self.decode is not None:
                self.decode.close()  # its running sequences finish on the model they started with
            decoder = ContinuousDecoder(self.model.lm, s.max_batch_size)
            self.decode = DecodeLoop(decoder, s.max_prefill, on_step=self._stepped, on_idle=release_freed_memory)
        self.decode.configure(s.max_batch_size, s.max_prefill, s.decode_nice)

    def _stepped(self, batch_size: int) -> None:
        """After each decoding step (on the decoding thread)."""
        self.metrics.batch(batch_size)
        self._steps = getattr(self, "_steps", 0) + 1
        if self._steps % 32 == 0:  # under steady traffic the batch never empties: trim as it runs
            release_freed_memory()

    def _job(self, request: lm_pb2.GenerateRequest) -> _Job:
        """Validate a request against this model and the per-request limits."""
        limits = self.settings
        instruction = request.instruction.strip()
        if not instruction:
            raise invalid_request("instruction is empty")
        history = [(t.question, t.answer) for t in request.history]
        chars = len(instruction) + len(request.system) + sum(len(q) + len(a) for q, a in history)
        if chars > limits.max_instruction_chars:
            what = "instruction" if chars == len(instruction) else "instruction, system prompt and history"
            raise invalid_request(f"{what} have {chars} characters; the limit is {limits.max_instruction_chars}")
        if len(request.molecules) > limits.max_molecules:
            raise invalid_request(f"{len(request.molecules)} molecules; the limit is {limits.max_molecules}")
        # The gateway sends every field set (a Caption's or an Ask's defaults); a direct caller's unset
        # fields take the generic defaults.
        decoding = resolve_decoding(request.decoding, "")
        if decoding.max_new_tokens > limits.max_new_tokens_limit:
            raise invalid_request(
                f"decoding.max_new_tokens must be in 1..{limits.max_new_tokens_limit}, got {decoding.max_new_tokens}"
            )
        if decoding.num_beams > limits.max_beams:
            raise invalid_request(f"decoding.num_beams must be in 1..{limits.max_beams}, got {decoding.num_beams}")
        m = self.model
        mol = None
        if m.config.molecule_tokens and request.molecules:
            tokens = []
            for i, molecule in enumerate(request.molecules):
                where = f"molecules[{i}].molecule_tokens"
                if not molecule.HasField("molecule_tokens"):
                    raise invalid_request(f"{where}: this model needs molecule tokens (from EncoderService.Encode)")
                try:
                    t = from_proto(molecule.molecule_tokens)
                except ValueError as err:
                    raise invalid_request(f"{where}: {err}") from None
                want = (m.num_query_tokens, m.lm.hidden_size)
                if tuple(t.shape) != want:
                    raise invalid_request(f"{where} must have shape {want}, got {tuple(t.shape)}")
                tokens.append(t)
            mol = torch.stack(tokens)
        smiles = [molecule.smiles for molecule in request.molecules]
        try:  # e.g. a question that holds the placeholder token itself
            prompt = m.prompt(instruction, smiles, history=history, system=request.system.strip())
        except ValueError as err:
            raise invalid_request(str(err)) from None
        return _Job(prompt, mol, decoding, len(m.lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]))

    def _molecule_tokens(self, job: _Job) -> torch.Tensor | None:
        """The job's molecule tokens (n_molecules, Q, H), on the model's device and dtype."""
        m = self.model
        return None if job.mol is None else job.mol.to(m.device, dtype=m.llm_proj.weight.dtype)

    def _sequence(self, job: _Job, on_token: Any = None) -> Sequence:
        mol = self._molecule_tokens(job)
        (embeds,) = self.model.lm.prompt_embeds([job.prompt], mol)
        return Sequence(embeds, job.decoding, on_token=on_token)

    async def _beam_search(self, job: _Job) -> Generation:
        """Beam search, one request at a time beside the running batch (rare: reference-style decoding)."""
        if self._beams is None:
            self._beams = asyncio.Lock()
        m, mol = self.model, self._molecule_tokens(job)
        async with self._beams:
            start = time.perf_counter()
            try:
                (g,) = await asyncio.to_thread(m.lm.generate, [job.prompt], mol, job.decoding)
            finally:
                release_freed_memory()
        log.info("lm: beam search (%d beams) in %.2f s", job.decoding.num_beams, time.perf_counter() - start)
        return g

    async def _generate(self, job: _Job) -> Generation:
        if job.decoding.num_beams > 1:
            return await self._beam_search(job)
        return self.model.lm.generation(await self.decode.submit(self._sequence(job)))

    @rpc
    async def Generate(self, request: lm_pb2.GenerateRequest, grpc_context: Any = None) -> lm_pb2.GenerateResult:
        job = self._job(request)
        g = await self._generate(job)
        return lm_pb2.GenerateResult(
            text=g.text, num_tokens=g.num_tokens, finish_reason=g.finish_reason, prompt_tokens=job.prompt_tokens
        )

    @rpc_stream
    async def GenerateStream(self, request: lm_pb2.GenerateRequest, grpc_context: Any = None):
        job = self._job(request)
        if job.decoding.num_beams > 1:  # beams settle at the end: the text comes in one chunk
            g = await self._beam_search(job)
            yield lm_pb2.TokenChunk(
                text=g.text, num_tokens=g.num_tokens, finish_reason=g.finish_reason, prompt_tokens=job.prompt_tokens
            )
            return
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        seq = self._sequence(job, on_token=lambda s: loop.call_soon_threadsafe(queue.put_nowait, len(s.tokens)))
        done = asyncio.ensure_future(self.decode.submit(seq))
        done.add_done_callback(lambda _: queue.put_nowait(None))
        lm, eos, stops = self.model.lm, self.model.lm.tokenizer.eos_token_id, job.decoding.stop
        sent = ""
        try:
            while (n := await queue.get()) is not None:
                ids = seq.tokens[:n]
                end = ids.index(eos) if eos in ids else len(ids)
                text = lm.answer_text(ids[:end])  # as the final text is read, and stop strings matched
                if stops:  # nothing from a stop string on, nor what may be the start of one
                    text = stop_safe_prefix(text, stops)
                text = text.rstrip()
                # Hold back trailing whitespace (the final text is stripped) and a partial multi-byte character.
                if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
                    yield lm_pb2.TokenChunk(text=text[len(sent) :], num_tokens=n)
                    sent = text
            g = self.model.lm.generation(await done)
        finally:
            done.cancel()  # the client went away: the sequence leaves the batch
        # The last chunk completes the text so that the chunks add up to Generate's text exactly.
        rest = g.text[len(sent) :] if g.text.startswith(sent) else g.text
        yield lm_pb2.TokenChunk(
            text=rest, num_tokens=g.num_tokens, finish_reason=g.finish_reason, prompt_tokens=job.prompt_tokens
        )

    def checkpoint(self) -> dict[str, Any]:
        """What the served checkpoint is (for the gateway's /v1/models): no file paths."""
        info, config, meta = self.info, self.model.config, self.info.metadata or {}
        return {
            "model_id": info.model_id,
            "trained": info.trained,
            "created": info.created,
            "training_stage": meta.get("stage"),
            "training_steps": meta.get("steps"),
            "base_lm": config.lm.base,
            "prompt_template": config.prompt_template,
            "molecule_tokens": self.model.num_query_tokens if config.molecule_tokens else 0,
        }

    def load(self) -> dict[str, Any]:
        """The decoding batch's state, for the gateway's admission control."""
        return {**self.decode.load(), "max_new_tokens_limit": self.settings.max_new_tokens_limit}

    async def ready(self) -> bool:
        return True


app = LMStage.bind()

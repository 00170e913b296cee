"""LM stage (large GPU): prompt + molecule tokens -> text, batched, EOS-stopped, streamed on request.

Concurrent Generate calls are batched (`batcher.Batcher`: a batch stays open while requests keep
arriving); within a batch, requests with the same decoding options run as one model call.
GenerateStream decodes its request alone and sends text as tokens arrive (greedy only, a
transformers limit: with beams the text comes in one chunk).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from molm3d.v1 import lm_pb2
from ray import serve
from transformers.generation.streamers import BaseStreamer

from molm3d_core.models import DecodingOptions, Generation

from ..common.decoding import resolve_decoding
from ..common.model import ModelStage, release_freed_memory
from ..common.stage import invalid_request, rpc, rpc_stream
from ..common.tensors import from_proto
from .batcher import Batcher

log = logging.getLogger("ray.serve")


@dataclass
class _Job:
    prompt: str
    mol: torch.Tensor | None  # (Q, H)
    decoding: DecodingOptions

    @property
    def key(self) -> tuple[Any, ...]:
        d = self.decoding
        return (d.num_beams, d.max_new_tokens, d.repetition_penalty, d.length_penalty, d.no_repeat_ngram_size)


class _QueueStreamer(BaseStreamer):
    """Hands each decoding step's token ids from the generating thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # transformers first passes the prompt ids
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, value.reshape(-1).tolist())

    def end(self) -> None:
        pass


@serve.deployment(name="LM")
class LMStage(ModelStage):
    stage = "lm"
    with_lm = True
    with_molecule = False  # molecule tokens arrive projected, from the encoder stage

    def __init__(self) -> None:
        self.batcher: Batcher[_Job, Generation] = Batcher(self._generate_batch)
        self.reconfigure({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._init_stage(config.get("token_env", "MOLM3D_API_TOKEN"))
        self._configure_model(config)
        self.max_new_tokens_limit = int(config.get("max_new_tokens_limit", 512))
        self.max_beams = int(config.get("max_beams", 5))
        self.max_instruction_chars = int(config.get("max_instruction_chars", 2_000))
        self.batcher.configure(
            max_batch_size=int(config.get("max_batch_size", 32)),
            max_wait_s=float(config.get("batch_wait_timeout_s", 5.0)),
            idle_s=float(config.get("batch_idle_s", 1.0)),
        )

    def _job(self, request: lm_pb2.GenerateRequest) -> _Job:
        """Validate a request against this model and the per-request limits."""
        instruction = request.instruction.strip()
        if not instruction:
            raise invalid_request("instruction is empty")
        if len(instruction) > self.max_instruction_chars:
            raise invalid_request(
                f"instruction has {len(instruction)} characters; the limit is {self.max_instruction_chars}"
            )
        # The gateway sends every field set (a Caption's or an Ask's defaults); a direct caller's unset
        # fields take the generic defaults.
        decoding = resolve_decoding(request.decoding, "")
        if decoding.max_new_tokens > self.max_new_tokens_limit:
            raise invalid_request(
                f"decoding.max_new_tokens must be in 1..{self.max_new_tokens_limit}, got {decoding.max_new_tokens}"
            )
        if decoding.num_beams > self.max_beams:
            raise invalid_request(f"decoding.num_beams must be in 1..{self.max_beams}, got {decoding.num_beams}")
        m = self.model
        mol = None
        if m.config.molecule_tokens:
            if not request.HasField("molecule_tokens"):
                raise invalid_request("this model needs molecule_tokens (from EncoderService.Encode)")
            try:
                mol = from_proto(request.molecule_tokens)
            except ValueError as err:
                raise invalid_request(f"molecule_tokens: {err}") from None
            want = (m.num_query_tokens, m.lm.hidden_size)
            if tuple(mol.shape) != want:
                raise invalid_request(f"molecule_tokens must have shape {want}, got {tuple(mol.shape)}")
        return _Job(m.prompt(instruction, request.smiles), mol, decoding)

    def _run(self, jobs: list[_Job], streamer: BaseStreamer | None = None) -> list[Generation]:
        m = self.model
        mol = None
        if jobs[0].mol is not None:
            mol = torch.stack([j.mol for j in jobs]).to(m.device, dtype=m.llm_proj.weight.dtype)
        try:
            return m.lm.generate([j.prompt for j in jobs], mol, jobs[0].decoding, streamer=streamer)
        finally:
            release_freed_memory()

    async def _generate_batch(self, jobs: list[_Job]) -> list[Generation]:
        self.metrics.batch(len(jobs))
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.key].append(i)
        results: list[Generation | None] = [None] * len(jobs)
        for indices in groups.values():
            start = time.perf_counter()
            gens = await asyncio.to_thread(self._run, [jobs[i] for i in indices])
            log.info(
                "lm: %d requests in %.2f s (%d tokens)",
                len(indices),
                time.perf_counter() - start,
                sum(g.num_tokens for g in gens),
            )
            for i, g in zip(indices, gens, strict=True):
                results[i] = g
        return results  # type: ignore[return-value]

    @rpc
    async def Generate(self, request: lm_pb2.GenerateRequest, grpc_context: Any = None) -> lm_pb2.GenerateResult:
        g = await self.batcher.submit(self._job(request))
        return lm_pb2.GenerateResult(text=g.text, num_tokens=g.num_tokens, finish_reason=g.finish_reason)

    @rpc_stream
    async def GenerateStream(self, request: lm_pb2.GenerateRequest, grpc_context: Any = None):
        job = self._job(request)
        if job.decoding.num_beams > 1:
            g = await self.batcher.submit(job)
            yield lm_pb2.TokenChunk(text=g.text, num_tokens=g.num_tokens, finish_reason=g.finish_reason)
            return
        self.metrics.batch(1)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        result: list[Generation] = []
        failure: list[BaseException] = []

        def work() -> None:
            try:
                result.extend(self._run([job], _QueueStreamer(loop, queue)))
            except BaseException as exc:
                failure.append(exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=work, name="lm-stream", daemon=True).start()
        tokenizer, eos = self.model.lm.tokenizer, self.model.lm.tokenizer.eos_token_id
        ids: list[int] = []
        sent = ""
        while (step := await queue.get()) is not None:
            ids.extend(step)
            stop = ids.index(eos) if eos in ids else len(ids)
            text = tokenizer.decode(ids[:stop], skip_special_tokens=True).strip()
            # Hold back trailing whitespace (the final text is stripped) and a partial multi-byte character.
            if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
                yield lm_pb2.TokenChunk(text=text[len(sent) :], num_tokens=len(ids))
                sent = text
        if failure:
            raise failure[0]
        g = result[0]
        # The last chunk completes the text so that the chunks add up to Generate's text exactly.
        rest = g.text[len(sent) :] if g.text.startswith(sent) else g.text
        yield lm_pb2.TokenChunk(text=rest, num_tokens=g.num_tokens, finish_reason=g.finish_reason)

    async def ready(self) -> bool:
        return True


app = LMStage.bind()

"""Gateway: the public API. Chains conformer -> encoder -> lm (Caption, Ask, streaming variants),
conformer -> encoder (Embed) and encoder -> retrieval (Retrieve) through deployment handles; serves
gRPC (Molm3DService and grpc.health.v1.Health) and HTTP JSON (see http.py).

Per-request deadline: metadata `molm3d-timeout-ms` (HTTP header `x-molm3d-timeout-ms`), capped by and
defaulting to `request_timeout_s`; past it the call fails with DEADLINE_EXCEEDED. A Caption or Ask that
could not be answered within its deadline is refused at once with RESOURCE_EXHAUSTED and a retry hint
(admission.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from molm3d.v1 import common_pb2, encoder_pb2, gateway_pb2, lm_pb2, retrieval_pb2
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from molm3d_core.prompts import CAPTION_INSTRUCTION, parse_number

from ..bulk.config import WithKafka
from ..common.decoding import decoding_proto, resolve_decoding
from ..common.errors import ServiceError
from ..common.grpc_decode import Undecodable
from ..common.settings import StageSettings, setting
from ..common.stage import Stage, invalid_request, rpc, rpc_stream
from .admission import Admission
from .http import handle_http
from .openai_api import OpenAIRoutes

# stage -> (application, deployment) in serve.yaml
STAGES = {
    "conformer": ("conformer", "Conformer"),
    "encoder": ("encoder", "Encoder"),
    "lm": ("lm", "LM"),
    "retrieval": ("retrieval", "Retrieval"),
}
MAX_QUESTION_CHARS = 2_000
MAX_K = 1_000
log = logging.getLogger("ray.serve")


def task_decoding(decoding: common_pb2.DecodingOptions, task: str) -> common_pb2.DecodingOptions:
    """The request's decoding, checked, with the task's defaults in the fields it leaves unset, so that
    a served caption or answer decodes as `molm3d caption` / `molm3d ask` do."""
    return decoding_proto(resolve_decoding(decoding, task))


@dataclass(frozen=True)
class Prompt:
    """What the LM is asked: an instruction about 0, 1 or more molecules, maybe after earlier turns."""

    instruction: str
    molecules: list[common_pb2.MoleculeInput]
    history: tuple[tuple[str, str], ...] = ()  # (question, answer) turns before this one, oldest first
    system: str = ""


def _request_id() -> str:
    from ray.serve.context import _get_serve_request_context  # Serve's own id, carried to every stage

    return _get_serve_request_context().request_id


@dataclass(frozen=True)
class GatewaySettings(StageSettings, WithKafka):
    """user_config of the Gateway deployment. `kafka`: the broker its HTTP bulk routes submit jobs to and
    read them from (bulk_api.py; config.WithKafka): `molm3d serve --kafka` sets the bulk workers' broker."""

    request_timeout_s: float = setting(120.0, gt=0)  # a call's deadline, unless the caller asks for less
    admission_margin: float = setting(0.8, gt=0, le=1)  # admit when the predicted answer time <= this x deadline
    admission_poll_s: float = setting(0.25, gt=0)  # how often the LM's load is read
    applications: dict = dataclasses.field(default_factory=dict)  # stage -> Serve application, when renamed


@serve.deployment(name="Gateway")
class GatewayStage(Stage):
    stage = "gateway"

    def __init__(self) -> None:
        self.reconfigure({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.settings = s = GatewaySettings.from_user_config(config)
        self._init_stage(s.token_env)
        self.request_timeout_s = s.request_timeout_s
        if not hasattr(self, "admission"):
            self.admission = Admission()
            self.openai = OpenAIRoutes(self)
        self.admission.margin, self.admission.poll_s = s.admission_margin, s.admission_poll_s
        apps = {**{k: v[0] for k, v in STAGES.items()}, **s.applications}
        # Unchecked handles: the applications start together, and the LM may not exist yet when the
        # gateway starts (a checked handle then fails the whole deploy); calls wait for its replicas.
        self.handles: dict[str, DeploymentHandle] = {
            stage: serve.get_deployment_handle(deployment, app_name=apps[stage], _check_exists=False)
            for stage, (_, deployment) in STAGES.items()
        }

    # -- helpers -------------------------------------------------------------------------------------

    def _timeout(self, grpc_context: Any) -> float:
        """The call's deadline in seconds: `molm3d-timeout-ms` metadata, capped by request_timeout_s."""
        raw = dict(grpc_context.invocation_metadata()).get("molm3d-timeout-ms") if grpc_context is not None else None
        if raw:
            try:
                ms = float(raw)
            except ValueError:
                ms = math.nan
            if not 0 < ms < math.inf:
                raise invalid_request(f"molm3d-timeout-ms must be a positive number of milliseconds, got {raw!r}")
            return min(self.request_timeout_s, ms / 1000)
        return self.request_timeout_s

    async def _call(self, stage: str, method: str, request: Any) -> Any:
        """One stage call, tried again once when the replica that took it died: every stage call is
        idempotent, and Serve routes the second try to a live replica."""
        try:
            return await getattr(self.handles[stage], method).remote(request)
        except RayActorError:
            log.warning("a %s replica died during %s; trying once more", stage, method)
            return await getattr(self.handles[stage], method).remote(request)

    async def _encode(self, molecule: common_pb2.MoleculeInput) -> tuple[common_pb2.Conformer, Any]:
        conformer = await self._call("conformer", "Generate", molecule)
        encoding = await self._call("encoder", "Encode", encoder_pb2.EncodeRequest(conformer=conformer))
        return conformer, encoding

    async def _encode_all(self, molecules: list[common_pb2.MoleculeInput]) -> list[tuple[common_pb2.Conformer, Any]]:
        """Every molecule encoded, concurrently. The first one that fails (in order) raises its ServiceError,
        with `molecule_index` set to its position."""
        results = await asyncio.gather(*(self._encode(m) for m in molecules), return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancelled
                err = self.as_service_error(result)
                err.molecule_index = i
                raise err
        return results

    @staticmethod
    def _answer(
        conformer: Any, encoding: Any, text: str, num_tokens: int, finish_reason: str, ask: bool
    ) -> gateway_pb2.Answer:
        answer = gateway_pb2.Answer(
            record_id=conformer.record_id,
            smiles=conformer.smiles,
            inchikey=conformer.inchikey,
            conformer_method=conformer.method,
            warnings=list(conformer.warnings),
            text=text,
            num_tokens=num_tokens,
            finish_reason=finish_reason,
            model_id=encoding.model_id,
            model_trained=encoding.model_trained,
            request_id=_request_id(),
        )
        number = parse_number(text) if ask else None
        if number is not None:
            answer.has_value, answer.value, answer.unit = True, number.value, number.unit or ""
        return answer

    @staticmethod
    def _question(request: gateway_pb2.AskRequest) -> str:
        question = request.question.strip()
        if not question:
            raise invalid_request("question is empty", request.molecule.id)
        if len(question) > MAX_QUESTION_CHARS:
            raise invalid_request(f"question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
        return question

    # -- the LM path: admission, encoding, decoding ------------------------------------------------------
    # Caption and Ask are Prompts with one molecule and one answer; a chat completion (openai_api.py) may
    # have none or several molecules, earlier turns, and n answers.

    def _admit(self, decoding: common_pb2.DecodingOptions, timeout_s: float, count: int = 1) -> None:
        """Refuse now what could not be answered in time (RESOURCE_EXHAUSTED); else count its `count`
        answers in (each one predicted behind the ones before it)."""
        self.admission.start(lambda: self.handles["lm"].load.remote())
        for admitted in range(count):
            try:
                self.admission.check(decoding.max_new_tokens, timeout_s, self.stage)
            except ServiceError:
                self.admission.before_lm -= admitted
                raise
            self.admission.before_lm += 1

    async def _encode_for_lm(self, prompt: Prompt, count: int) -> list[tuple[common_pb2.Conformer, Any]]:
        """`_encode_all` for an admitted prompt with `count` answers: its time in the first stages feeds the
        admission estimate."""
        start = time.monotonic()
        try:
            encoded = await self._encode_all(prompt.molecules)
        except BaseException:
            self.admission.before_lm -= count
            raise
        seconds = time.monotonic() - start if prompt.molecules else None  # a text-only prompt skips the stages
        for _ in range(count):
            self.admission.encoded(seconds)
        return encoded

    @staticmethod
    def _generate_requests(
        prompt: Prompt, encoded: list[tuple[Any, Any]], decoding: common_pb2.DecodingOptions, n: int
    ) -> list[lm_pb2.GenerateRequest]:
        """n requests for one prompt; with a seed, answer i samples with seed + i (OpenAI's `n`)."""
        request = lm_pb2.GenerateRequest(
            instruction=prompt.instruction,
            molecules=[lm_pb2.PromptMolecule(smiles=c.smiles, molecule_tokens=e.molecule_tokens) for c, e in encoded],
            history=[lm_pb2.Turn(question=q, answer=a) for q, a in prompt.history],
            system=prompt.system,
            decoding=decoding,
        )
        requests = []
        for i in range(n):
            r = lm_pb2.GenerateRequest()
            r.CopyFrom(request)
            if i and decoding.HasField("seed"):
                r.decoding.seed = decoding.seed + i
            requests.append(r)
        return requests

    async def complete(
        self, prompt: Prompt, decoding: common_pb2.DecodingOptions, timeout_s: float, n: int = 1
    ) -> tuple[list[tuple[common_pb2.Conformer, Any]], list[lm_pb2.GenerateResult]]:
        """The prompt's molecules (conformer, encoding) and its n answers."""
        self._admit(decoding, timeout_s, n)

        async def one(request: lm_pb2.GenerateRequest) -> lm_pb2.GenerateResult:
            try:
                return await self._call("lm", "Generate", request)
            finally:
                self.admission.answered()

        async def work() -> tuple[list[tuple[Any, Any]], list[lm_pb2.GenerateResult]]:
            encoded = await self._encode_for_lm(prompt, n)
            requests = self._generate_requests(prompt, encoded, decoding, n)
            return encoded, list(await asyncio.gather(*(one(r) for r in requests)))

        return await asyncio.wait_for(work(), timeout_s)

    async def stream(
        self, prompt: Prompt, decoding: common_pb2.DecodingOptions, timeout_s: float, n: int = 1
    ) -> AsyncIterator[Any]:
        """First the prompt's molecules (a list of (conformer, encoding)), then (i, TokenChunk) for each
        piece of answer i as it is decoded; each answer's last chunk has its finish_reason."""
        self._admit(decoding, timeout_s, n)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        encoded = await asyncio.wait_for(self._encode_for_lm(prompt, n), timeout_s)
        yield encoded
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(i: int, request: lm_pb2.GenerateRequest) -> None:
            try:
                last = None
                async for chunk in self.handles["lm"].options(stream=True).GenerateStream.remote(request):
                    last = chunk
                    queue.put_nowait((i, chunk))
                if last is None or not last.finish_reason:
                    raise ServiceError.make(
                        grpc.StatusCode.INTERNAL, "internal", "the LM stream ended without a result", self.stage
                    )
            except Exception as exc:  # handed to the consumer, which raises it
                queue.put_nowait((i, exc))
            finally:
                self.admission.answered()

        tasks = [
            asyncio.ensure_future(pump(i, r))
            for i, r in enumerate(self._generate_requests(prompt, encoded, decoding, n))
        ]
        try:
            open_streams = n
            while open_streams:
                i, item = await asyncio.wait_for(queue.get(), max(0.001, deadline - loop.time()))
                if isinstance(item, Exception):
                    raise item
                if item.finish_reason:
                    open_streams -= 1
                yield i, item
        finally:
            for task in tasks:  # the client went away or failed: the LM drops the sequences
                task.cancel()

    async def _answer_one(self, molecule: Any, instruction: str, decoding: Any, ask: bool, timeout_s: float) -> Any:
        encoded, (result,) = await self.complete(Prompt(instruction, [molecule]), decoding, timeout_s)
        return self._answer(*encoded[0], result.text, result.num_tokens, result.finish_reason, ask)

    async def _stream_one(
        self, molecule: Any, instruction: str, decoding: Any, ask: bool, timeout_s: float
    ) -> AsyncIterator[gateway_pb2.AnswerChunk]:
        async with contextlib.aclosing(self.stream(Prompt(instruction, [molecule]), decoding, timeout_s)) as events:
            ((conformer, encoding),) = await anext(events)
            text = ""
            async for _, chunk in events:
                text += chunk.text
                if chunk.text:
                    yield gateway_pb2.AnswerChunk(text=chunk.text)
                if chunk.finish_reason:
                    answer = self._answer(conformer, encoding, text, chunk.num_tokens, chunk.finish_reason, ask)
                    yield gateway_pb2.AnswerChunk(answer=answer)

    # -- gRPC: molm3d.v1.Molm3DService ------------------------------------------------------------------

    @rpc
    async def Caption(self, request: gateway_pb2.CaptionRequest, grpc_context: Any = None) -> gateway_pb2.Answer:
        decoding = task_decoding(request.decoding, "caption")
        return await self._answer_one(
            request.molecule, CAPTION_INSTRUCTION, decoding, False, self._timeout(grpc_context)
        )

    @rpc
    async def Ask(self, request: gateway_pb2.AskRequest, grpc_context: Any = None) -> gateway_pb2.Answer:
        question, decoding = self._question(request), task_decoding(request.decoding, "ask")
        return await self._answer_one(request.molecule, question, decoding, True, self._timeout(grpc_context))

    @rpc_stream
    async def CaptionStream(self, request: gateway_pb2.CaptionRequest, grpc_context: Any = None):
        timeout_s = self._timeout(grpc_context)
        decoding = task_decoding(request.decoding, "caption")
        async for chunk in self._stream_one(request.molecule, CAPTION_INSTRUCTION, decoding, False, timeout_s):
            yield chunk

    @rpc_stream
    async def AskStream(self, request: gateway_pb2.AskRequest, grpc_context: Any = None):
        timeout_s = self._timeout(grpc_context)
        question, decoding = self._question(request), task_decoding(request.decoding, "ask")
        async for chunk in self._stream_one(request.molecule, question, decoding, True, timeout_s):
            yield chunk

    @rpc
    async def Embed(self, request: gateway_pb2.EmbedRequest, grpc_context: Any = None) -> gateway_pb2.Embedding:
        conformer, encoding = await asyncio.wait_for(self._encode(request.molecule), self._timeout(grpc_context))
        return gateway_pb2.Embedding(
            record_id=conformer.record_id,
            smiles=conformer.smiles,
            inchikey=conformer.inchikey,
            conformer_method=conformer.method,
            warnings=list(conformer.warnings),
            embedding=encoding.retrieval_embedding,
            model_id=encoding.model_id,
            model_trained=encoding.model_trained,
            request_id=_request_id(),
        )

    @rpc
    async def Retrieve(
        self, request: gateway_pb2.RetrieveRequest, grpc_context: Any = None
    ) -> gateway_pb2.RetrieveResponse:
        return await asyncio.wait_for(self._retrieve(request), self._timeout(grpc_context))

    async def _retrieve(self, request: gateway_pb2.RetrieveRequest) -> gateway_pb2.RetrieveResponse:
        k = request.k or 20
        if not 1 <= k <= MAX_K:
            raise invalid_request(f"k must be in 1..{MAX_K}, got {k}")
        which = request.WhichOneof("query")
        if which == "molecule":
            _, encoding = await self._encode(request.molecule)
            search = retrieval_pb2.SearchRequest(molecule_embedding=encoding.retrieval_embedding, k=k)
        elif which == "text":
            encoded = await self._call("encoder", "EncodeText", encoder_pb2.EncodeTextRequest(text=request.text))
            search = retrieval_pb2.SearchRequest(text_embedding=encoded.retrieval_embedding, k=k)
        else:
            raise invalid_request("give a molecule or a text to retrieve with")
        found = await self._call("retrieval", "Search", search)
        return gateway_pb2.RetrieveResponse(
            hits=list(found.hits), index_version=found.index_version, request_id=_request_id()
        )

    # -- health ---------------------------------------------------------------------------------------

    # Readiness comes from Serve's own status (the controller's view: replicas started and passing
    # Serve's health checks), never from calls into the stages, which queue behind their requests. One
    # status query at a time, shared by concurrent probes; a probe waits for it at most
    # `health_timeout_s`, then answers "not ready" instead of hanging.
    health_timeout_s = 0.8

    async def stages_ready(self) -> dict[str, bool]:
        query = getattr(self, "_status_query", None)
        if query is None or query.done():
            targets = {stage: (h.app_name, h.deployment_name) for stage, h in self.handles.items()}
            query = self._status_query = asyncio.ensure_future(asyncio.to_thread(self._running_stages, targets))
        try:
            return await asyncio.wait_for(asyncio.shield(query), self.health_timeout_s)
        except TimeoutError:
            return dict.fromkeys(self.handles, False)
        except Exception:
            log.warning("gateway: Serve's status could not be read", exc_info=True)
            return dict.fromkeys(self.handles, False)

    @staticmethod
    def _running_stages(targets: dict[str, tuple[str, str]]) -> dict[str, bool]:
        """Stage -> whether Serve has a RUNNING replica of its deployment (blocking: a worker thread)."""
        apps = serve.status().applications

        def running(app: str, deployment: str) -> bool:
            found = apps[app].deployments.get(deployment) if app in apps else None
            states = found.replica_states if found is not None else {}
            return any(getattr(state, "value", state) == "RUNNING" and n > 0 for state, n in states.items())

        return {stage: running(app, deployment) for stage, (app, deployment) in targets.items()}

    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context: Any = None):
        """grpc.health.v1.Health/Check: SERVING while every stage has a running replica. Needs no
        `application` metadata (services/common/serve_patches.py) and answers within a second."""
        if isinstance(request, Undecodable):  # public and tokenless, like kubelet's probe: bytes still checked
            raise self._fail(invalid_request(request.describe()), grpc_context)
        ready = all((await self.stages_ready()).values())
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    async def ready(self) -> bool:
        return True

    # -- HTTP JSON ------------------------------------------------------------------------------------

    async def __call__(self, request: Any) -> Any:
        return await handle_http(self, request)


app = GatewayStage.bind()

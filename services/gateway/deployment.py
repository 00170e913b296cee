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

from ..common.decoding import decoding_proto, resolve_decoding
from ..common.errors import ServiceError
from ..common.grpc_decode import Undecodable
from ..common.settings import StageSettings, setting
from ..common.stage import Stage, invalid_request, rpc, rpc_stream
from .admission import Admission
from .http import handle_http

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


def _request_id() -> str:
    from ray.serve.context import _get_serve_request_context  # Serve's own id, carried to every stage

    return _get_serve_request_context().request_id


@dataclass(frozen=True)
class GatewaySettings(StageSettings):
    """user_config of the Gateway deployment."""

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

    def _generate_request(
        self, instruction: str, conformer: Any, encoding: Any, decoding: common_pb2.DecodingOptions
    ) -> lm_pb2.GenerateRequest:
        return lm_pb2.GenerateRequest(
            instruction=instruction,
            smiles=conformer.smiles,
            molecule_tokens=encoding.molecule_tokens,
            decoding=decoding,
        )

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

    def _admit(self, decoding: common_pb2.DecodingOptions, timeout_s: float) -> None:
        """Refuse now what could not be answered in time (RESOURCE_EXHAUSTED); else count it in."""
        self.admission.start(lambda: self.handles["lm"].load.remote())
        self.admission.check(decoding.max_new_tokens, timeout_s, self.stage)
        self.admission.before_lm += 1

    async def _encode_for_lm(self, molecule: Any) -> tuple[common_pb2.Conformer, Any]:
        """`_encode` for an admitted request: its time in the first stages feeds the admission estimate."""
        start = time.monotonic()
        try:
            conformer, encoding = await self._encode(molecule)
        except BaseException:
            self.admission.before_lm -= 1
            raise
        self.admission.encoded(time.monotonic() - start)
        return conformer, encoding

    async def _complete(
        self, molecule: Any, instruction: str, decoding: Any, ask: bool, timeout_s: float
    ) -> gateway_pb2.Answer:
        self._admit(decoding, timeout_s)

        async def work() -> gateway_pb2.Answer:
            conformer, encoding = await self._encode_for_lm(molecule)
            request = self._generate_request(instruction, conformer, encoding, decoding)
            try:
                result = await self._call("lm", "Generate", request)
            finally:
                self.admission.answered()
            return self._answer(conformer, encoding, result.text, result.num_tokens, result.finish_reason, ask)

        return await asyncio.wait_for(work(), timeout_s)

    async def _stream(
        self, molecule: Any, instruction: str, decoding: Any, ask: bool, timeout_s: float
    ) -> AsyncIterator[gateway_pb2.AnswerChunk]:
        self._admit(decoding, timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        conformer, encoding = await asyncio.wait_for(self._encode_for_lm(molecule), timeout_s)
        request = self._generate_request(instruction, conformer, encoding, decoding)
        chunks = self.handles["lm"].options(stream=True).GenerateStream.remote(request)
        text, last = "", None
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), max(0.001, deadline - loop.time()))
                except StopAsyncIteration:
                    break
                text += chunk.text
                last = chunk
                if chunk.text:
                    yield gateway_pb2.AnswerChunk(text=chunk.text)
        finally:
            self.admission.answered()
        if last is None:
            raise ServiceError.make(
                grpc.StatusCode.INTERNAL, "internal", "the LM stream ended without a result", self.stage
            )
        yield gateway_pb2.AnswerChunk(
            answer=self._answer(conformer, encoding, text, last.num_tokens, last.finish_reason, ask)
        )

    # -- gRPC: molm3d.v1.Molm3DService ------------------------------------------------------------------

    @rpc
    async def Caption(self, request: gateway_pb2.CaptionRequest, grpc_context: Any = None) -> gateway_pb2.Answer:
        decoding = task_decoding(request.decoding, "caption")
        return await self._complete(request.molecule, CAPTION_INSTRUCTION, decoding, False, self._timeout(grpc_context))

    @rpc
    async def Ask(self, request: gateway_pb2.AskRequest, grpc_context: Any = None) -> gateway_pb2.Answer:
        question, decoding = self._question(request), task_decoding(request.decoding, "ask")
        return await self._complete(request.molecule, question, decoding, True, self._timeout(grpc_context))

    @rpc_stream
    async def CaptionStream(self, request: gateway_pb2.CaptionRequest, grpc_context: Any = None):
        timeout_s = self._timeout(grpc_context)
        decoding = task_decoding(request.decoding, "caption")
        async for chunk in self._stream(request.molecule, CAPTION_INSTRUCTION, decoding, False, timeout_s):
            yield chunk

    @rpc_stream
    async def AskStream(self, request: gateway_pb2.AskRequest, grpc_context: Any = None):
        timeout_s = self._timeout(grpc_context)
        question, decoding = self._question(request), task_decoding(request.decoding, "ask")
        async for chunk in self._stream(request.molecule, question, decoding, True, timeout_s):
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

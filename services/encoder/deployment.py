"""Encoder stage (small GPU): conformer -> Uni-Mol -> Q-Former -> molecule tokens + retrieval embedding;
conformer -> Uni-Mol -> property heads -> values in units (PredictProperties, for the web console).

Concurrent requests are batched (`@serve.batch`); the LM's weights are never loaded here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from molm3d.v1 import encoder_pb2
from ray import serve

from molm3d_core.chem import MoleculeFeatures, collate, featurize_atoms
from molm3d_core.errors import MoleculeError
from molm3d_core.targets import TARGETS

from ..common.model import ModelSettings, ModelStage
from ..common.settings import setting
from ..common.stage import invalid_request, rpc
from ..common.tensors import to_proto

if TYPE_CHECKING:
    from molm3d_core.models import MoLM3D

MAX_TEXT_CHARS = 4_000


def heads_trained(model: MoLM3D) -> bool:
    """Whether the model's property heads give values in units (stage 0 set their statistics)."""
    return model.property_head is not None and model.property_head.trained


@torch.no_grad()
def property_values(model: MoLM3D, features: list[MoleculeFeatures], model_id: str) -> list[encoder_pb2.PropertyValues]:
    """The property heads' values of each molecule, one PropertyValue per head target in the heads' order
    (the numbers `molm3d predict` gives: the library's `predict_properties`); trained=False and no values
    when the heads are missing or were never trained, whose outputs mean nothing."""
    if not heads_trained(model) or not features:
        return [encoder_pb2.PropertyValues(trained=False, model_id=model_id) for _ in features]
    names = model.property_head.targets
    predicted = model.predict_properties(collate(features))  # name -> (B,) float64 in the target's unit
    columns = {name: predicted[name].cpu().tolist() for name in names}
    return [
        encoder_pb2.PropertyValues(
            values=[
                encoder_pb2.PropertyValue(
                    name=name,
                    value=columns[name][i],
                    unit=TARGETS[name].unit or "",
                    description=TARGETS[name].description,
                )
                for name in names
            ],
            trained=True,
            model_id=model_id,
        )
        for i in range(len(features))
    ]


@dataclass(frozen=True)
class EncoderSettings(ModelSettings):
    """user_config of the Encoder deployment: the model (ModelSettings) and its `@serve.batch` window."""

    max_batch_size: int = setting(32, ge=1)  # keep max_ongoing_requests >= this, so batches can fill
    batch_wait_timeout_s: float = setting(0.01, ge=0)


@serve.deployment(name="Encoder")
class EncoderStage(ModelStage):
    stage = "encoder"

    def __init__(self) -> None:
        self.reconfigure({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        s = EncoderSettings.from_user_config(config)
        self._init_stage(s.token_env)
        self._configure_model(s)
        self._encode_batch.set_max_batch_size(s.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self._predict_batch.set_max_batch_size(s.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    def _features(self, request: encoder_pb2.EncodeRequest) -> MoleculeFeatures:
        """The encoder's inputs for the request's conformer; MoleculeError (naming it) when it has none."""
        c = request.conformer
        if not c.elements:
            raise invalid_request("conformer has no atoms", c.record_id)
        if len(c.coordinates) != 3 * len(c.elements):
            raise invalid_request(
                f"{len(c.elements)} atoms need {3 * len(c.elements)} coordinates, got {len(c.coordinates)}", c.record_id
            )
        coords = np.asarray(c.coordinates, dtype=np.float32).reshape(-1, 3)
        try:
            return featurize_atoms(list(c.elements), coords, max_atoms=self.model.config.max_atoms)
        except MoleculeError as err:
            raise err.with_record(c.record_id) from None

    @rpc
    async def Encode(
        self, request: encoder_pb2.EncodeRequest, grpc_context: Any = None
    ) -> encoder_pb2.MoleculeEncoding:
        c = request.conformer
        tokens, embedding = await self._encode_batch(self._features(request))
        return encoder_pb2.MoleculeEncoding(
            record_id=c.record_id,
            molecule_tokens=to_proto(tokens),
            retrieval_embedding=to_proto(embedding),
            model_id=self.info.model_id,
            model_trained=self.info.trained,
        )

    @serve.batch(
        max_batch_size=EncoderSettings.max_batch_size, batch_wait_timeout_s=EncoderSettings.batch_wait_timeout_s
    )
    async def _encode_batch(self, items: list[MoleculeFeatures]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.metrics.batch(len(items))
        return await asyncio.to_thread(self._encode, items)

    @torch.no_grad()
    def _encode(self, items: list[MoleculeFeatures]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        tokens, embeddings = self.model.encode_molecules(collate(items))  # (B, Q, H_lm), (B, Q, E)
        return list(zip(tokens.cpu(), embeddings.float().cpu(), strict=True))

    @rpc
    async def PredictProperties(
        self, request: encoder_pb2.EncodeRequest, grpc_context: Any = None
    ) -> encoder_pb2.PropertyValues:
        features = self._features(request)  # checked even when there is nothing to predict
        if heads_trained(self.model):
            values = await self._predict_batch(features)
        else:
            (values,) = property_values(self.model, [features], self.info.model_id)  # no model call to batch
        values.record_id = request.conformer.record_id
        return values

    @serve.batch(
        max_batch_size=EncoderSettings.max_batch_size, batch_wait_timeout_s=EncoderSettings.batch_wait_timeout_s
    )
    async def _predict_batch(self, items: list[MoleculeFeatures]) -> list[encoder_pb2.PropertyValues]:
        self.metrics.batch(len(items))
        return await asyncio.to_thread(property_values, self.model, items, self.info.model_id)

    @rpc
    async def EncodeText(
        self, request: encoder_pb2.EncodeTextRequest, grpc_context: Any = None
    ) -> encoder_pb2.TextEncoding:
        if not request.text.strip():
            raise invalid_request("text is empty")
        if len(request.text) > MAX_TEXT_CHARS:
            raise invalid_request(f"text has {len(request.text)} characters; the limit is {MAX_TEXT_CHARS}")
        embedding, num_tokens = await asyncio.to_thread(self._embed_text, request.text)
        return encoder_pb2.TextEncoding(
            retrieval_embedding=to_proto(embedding), model_id=self.info.model_id, num_tokens=num_tokens
        )

    @torch.no_grad()
    def _embed_text(self, text: str) -> tuple[torch.Tensor, int]:
        num_tokens = int(self.model.tokenize_texts([text])["attention_mask"].sum())
        return self.model.embed_texts([text])[0].float().cpu(), num_tokens

    async def ready(self) -> bool:
        return True


app = EncoderStage.bind()

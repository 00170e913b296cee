"""Encoder stage (small GPU): conformer -> Uni-Mol -> Q-Former -> molecule tokens + retrieval embedding.

Concurrent requests are batched (`@serve.batch`); the LM's weights are never loaded here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from molm3d.v1 import encoder_pb2
from ray import serve

from molm3d_core.chem import MoleculeFeatures, collate, featurize_atoms
from molm3d_core.errors import MoleculeError

from ..common.model import ModelSettings, ModelStage
from ..common.settings import setting
from ..common.stage import invalid_request, rpc
from ..common.tensors import to_proto

MAX_TEXT_CHARS = 4_000


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

    @rpc
    async def Encode(
        self, request: encoder_pb2.EncodeRequest, grpc_context: Any = None
    ) -> encoder_pb2.MoleculeEncoding:
        c = request.conformer
        if not c.elements:
            raise invalid_request("conformer has no atoms", c.record_id)
        if len(c.coordinates) != 3 * len(c.elements):
            raise invalid_request(
                f"{len(c.elements)} atoms need {3 * len(c.elements)} coordinates, got {len(c.coordinates)}", c.record_id
            )
        coords = np.asarray(c.coordinates, dtype=np.float32).reshape(-1, 3)
        try:
            features = featurize_atoms(list(c.elements), coords, max_atoms=self.model.config.max_atoms)
        except MoleculeError as err:
            raise err.with_record(c.record_id) from None
        tokens, embedding = await self._encode_batch(features)
        return encoder_pb2.MoleculeEncoding(
            record_id=c.record_id,
            molecule_tokens=to_proto(tokens),
            retrieval_embedding=to_proto(embedding),
            model_id=self.info.model_id,
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

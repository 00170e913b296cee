"""Retrieval stage: nearest texts for a molecule embedding, nearest molecules for a text embedding.

Placeholder until the FAISS index (issue #5) is wired in: exact search over the example library.
"""

from __future__ import annotations

import asyncio
from typing import Any

from molm3d.v1 import retrieval_pb2
from ray import serve

from ..common.stage import Stage, invalid_request, rpc
from ..common.tensors import from_proto


@serve.deployment(name="Retrieval")
class RetrievalStage(Stage):
    stage = "retrieval"

    def __init__(self) -> None:
        self.reconfigure({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        self._init_stage(config.get("token_env", "MOLM3D_API_TOKEN"))
        self.version = "none"

    @rpc
    async def Search(
        self, request: retrieval_pb2.SearchRequest, grpc_context: Any = None
    ) -> retrieval_pb2.SearchResponse:
        which = request.WhichOneof("query")
        if which is None:
            raise invalid_request("give molecule_embedding or text_embedding")
        try:
            query = from_proto(getattr(request, which)).float()
        except ValueError as err:
            raise invalid_request(f"{which}: {err}") from None
        hits = await asyncio.to_thread(lambda: [])
        del query
        return retrieval_pb2.SearchResponse(hits=hits, index_version=self.version)

    async def ready(self) -> bool:
        return True


app = RetrievalStage.bind()

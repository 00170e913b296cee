"""Which checkpoint produced an index's embeddings, so that vectors of two models are never mixed."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # reading an index's provenance needs no torch
    from ..checkpoints import CheckpointInfo
    from ..models import MoLM3D


class EmbeddingMismatchError(ValueError):
    """Embeddings (or a query encoder) from another checkpoint than the one an index was built with."""


def weights_fingerprint(model: MoLM3D) -> str:
    """sha256 of every weight outside the LM (encoder, Q-Former, projections, matching head), as float32.

    Cast to float32 so that one checkpoint loaded in fp32 or bf16 has one fingerprint; the LM plays no
    part in retrieval. About 0.2 s for the `small` model.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(("lm.", "llm_proj.")):
            continue
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class EmbeddingSource:
    model_id: str
    fingerprint: str
    trained: bool
    path: str | None = None

    @classmethod
    def of(cls, model: MoLM3D, info: CheckpointInfo) -> EmbeddingSource:
        return cls(info.model_id, weights_fingerprint(model), info.trained, info.path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingSource:
        return cls(d["model_id"], d["fingerprint"], bool(d["trained"]), d.get("path"))

    def check_same(self, other: EmbeddingSource, what: str) -> None:
        """Raise EmbeddingMismatchError unless `other` (the model used for `what`) is this checkpoint."""
        if other.fingerprint == self.fingerprint:
            return
        where = f" at {self.path}" if self.path else ""
        raise EmbeddingMismatchError(
            f"{what}: the index holds embeddings of checkpoint {self.model_id!r}{where} "
            f"({self.fingerprint[:19]}...), but the model given is {other.model_id!r} ({other.fingerprint[:19]}...); "
            "refusing to mix embeddings of different checkpoints: use the index's checkpoint or rebuild the index"
        )

"""gRPC client of the gateway, and the `--remote HOST:PORT` mode of `molm3d caption | ask | retrieve`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from molm3d.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from rdkit import Chem

from molm3d_core.errors import MoleculeError

from .common.errors import error_detail

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class GatewayClient:
    """Molm3DService over one channel; `token` defaults to $MOLM3D_API_TOKEN."""

    def __init__(self, target: str, token: str | None = None, timeout_s: float | None = None) -> None:
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.stub = gateway_pb2_grpc.Molm3DServiceStub(self.channel)
        token = token if token is not None else os.environ.get("MOLM3D_API_TOKEN")
        self.metadata = [("application", "gateway")] + ([("authorization", f"Bearer {token}")] if token else [])
        self.timeout_s = timeout_s

    def caption(self, molecule: common_pb2.MoleculeInput, **decoding: int | float) -> gateway_pb2.Answer:
        request = gateway_pb2.CaptionRequest(molecule=molecule, decoding=common_pb2.DecodingOptions(**decoding))
        return self.stub.Caption(request, metadata=self.metadata, timeout=self.timeout_s)

    def ask(self, molecule: common_pb2.MoleculeInput, question: str, **decoding: int | float) -> gateway_pb2.Answer:
        request = gateway_pb2.AskRequest(
            molecule=molecule, question=question, decoding=common_pb2.DecodingOptions(**decoding)
        )
        return self.stub.Ask(request, metadata=self.metadata, timeout=self.timeout_s)

    def embed(self, molecule: common_pb2.MoleculeInput) -> gateway_pb2.Embedding:
        return self.stub.Embed(
            gateway_pb2.EmbedRequest(molecule=molecule), metadata=self.metadata, timeout=self.timeout_s
        )

    def retrieve(
        self, *, molecule: common_pb2.MoleculeInput | None = None, text: str | None = None, k: int = 20
    ) -> gateway_pb2.RetrieveResponse:
        request = (
            gateway_pb2.RetrieveRequest(molecule=molecule, k=k)
            if molecule
            else gateway_pb2.RetrieveRequest(text=text, k=k)
        )
        return self.stub.Retrieve(request, metadata=self.metadata, timeout=self.timeout_s)

    def close(self) -> None:
        self.channel.close()


def molecule_input(record: Any) -> common_pb2.MoleculeInput:
    """A parsed record as one molecule message: 3D records as a molfile (coordinates kept), others as SMILES."""
    if record.has_3d:
        return common_pb2.MoleculeInput(id=record.record_id, format="mol", text=Chem.MolToMolBlock(record.mol))
    return common_pb2.MoleculeInput(id=record.record_id, format="smiles", text=record.smiles)


def answer_row(task: str, answer: gateway_pb2.Answer) -> dict[str, Any]:
    row = {
        "task": task,
        "model_id": answer.model_id,
        "status": "ok",
        "record_id": answer.record_id,
        "smiles": answer.smiles,
        "inchikey": answer.inchikey,
        "conformer_method": answer.conformer_method,
        "warnings": list(answer.warnings),
        "finish_reason": answer.finish_reason,
        "request_id": answer.request_id,
    }
    if task == "caption":
        row["caption"] = answer.text
    else:
        row.update(
            answer=answer.text,
            value=answer.value if answer.has_value else None,
            unit=(answer.unit or None) if answer.has_value else None,
        )
    return row


def error_row(task: str, record_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"task": task, "status": "error", "record_id": record_id, "error_code": code, "error_message": message}


def run_remote(args: argparse.Namespace, records: Iterator[Any]) -> Iterator[dict[str, Any]]:
    """Results of `molm3d caption|ask --remote`, one per record in input order (8 calls in flight)."""
    client = GatewayClient(args.remote)
    task = args.task
    decoding = {
        "num_beams": args.beams,
        "max_new_tokens": args.max_new_tokens,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram,
    }

    def call(item: Any) -> dict[str, Any]:
        if isinstance(item, MoleculeError):
            return error_row(task, item.record_id, item.code.value, item.message)
        try:
            if task == "caption":
                return answer_row(task, client.caption(molecule_input(item), **decoding))
            return answer_row(task, client.ask(molecule_input(item), args.question, **decoding))
        except grpc.RpcError as err:
            detail = error_detail(err)
            return error_row(task, item.record_id, detail.code, detail.message)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            yield from pool.map(call, records)
    finally:
        client.close()


def retrieve_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Hit rows of `molm3d retrieve --remote` (same columns as a local search, without re-rank)."""
    client = GatewayClient(args.remote)
    try:
        if args.smiles:
            response = client.retrieve(molecule=common_pb2.MoleculeInput(text=args.smiles), k=args.k)
        else:
            response = client.retrieve(text=args.text, k=args.k)
    except grpc.RpcError as err:
        detail = error_detail(err)
        raise ValueError(f"{err.code().name}: {detail.code}: {detail.message}") from None
    finally:
        client.close()
    return [{"rank": rank, "id": h.id, "score": h.score, **dict(h.fields)} for rank, h in enumerate(response.hits, 1)]

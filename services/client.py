"""gRPC client of the gateway, and the `--remote HOST:PORT` mode of `molm3d caption | ask | retrieve`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from molm3d.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from molm3d_core.chem.inputs import RawRecord
from molm3d_core.errors import MoleculeError
from molm3d_core.results import ModelRef, Provenance, embedding_outputs, error_row, generation_outputs, ok_row

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


def molecule_input(record: RawRecord) -> common_pb2.MoleculeInput:
    """One record as the user gave it, its text and format: the conformer stage parses it, once."""
    return common_pb2.MoleculeInput(id=record.record_id, format=record.fmt, text=record.text)


def answer_row(
    task: str, answer: gateway_pb2.Answer, question: str | None = None, source_format: str | None = None
) -> dict[str, Any]:
    """The row of a served caption or answer: the library's row (`molm3d_core.results`), as a local run
    writes it. `source_format`: the format the molecule was sent in (the Answer does not echo it)."""
    outputs = generation_outputs(task, answer.text, answer.finish_reason, question)
    return ok_row(task, model_ref(answer), provenance(answer, source_format), outputs, answer.request_id)


def embedding_row(embedding: gateway_pb2.Embedding) -> dict[str, Any]:
    """The row of a served embedding, as `molm3d embed` writes it (the source format is not echoed)."""
    from .common.tensors import from_proto

    outputs = embedding_outputs(from_proto(embedding.embedding).float().tolist())
    return ok_row("embed", model_ref(embedding), provenance(embedding, None), outputs, embedding.request_id)


def provenance(reply: gateway_pb2.Answer | gateway_pb2.Embedding, source_format: str | None) -> Provenance:
    """Which molecule a served reply is about and how its conformer was made."""
    return Provenance(
        record_id=reply.record_id,
        smiles=reply.smiles,
        inchikey=reply.inchikey or None,
        source_format=source_format,
        conformer_method=reply.conformer_method,
        warnings=list(reply.warnings),
    )


def model_ref(reply: gateway_pb2.Answer | gateway_pb2.Embedding) -> ModelRef:
    """The model a server says answered (`trained` None when it did not say)."""
    return ModelRef(reply.model_id or None, reply.model_trained if reply.HasField("model_trained") else None)


def run_remote(args: argparse.Namespace, records: Iterator[RawRecord | MoleculeError]) -> Iterator[dict[str, Any]]:
    """Results of `molm3d caption|ask --remote`, one per record in input order (8 calls in flight).

    `records` are unparsed (`molm3d_core.chem.inputs.split_inputs`): each goes to the gateway as given.
    ValueError, before any call, for an option that cannot travel with a record."""
    if getattr(args, "xyz_charge", 0):
        raise ValueError("--xyz-charge is not sent with --remote (the server reads XYZ frames as neutral)")
    return _remote_rows(args, records)


def _remote_rows(args: argparse.Namespace, records: Iterator[RawRecord | MoleculeError]) -> Iterator[dict[str, Any]]:
    client = GatewayClient(args.remote)
    task = args.task
    question = getattr(args, "question", None)
    decoding = {
        "num_beams": args.beams,
        "max_new_tokens": args.max_new_tokens,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram,
    }
    unknown = ModelRef(None)

    def call(item: RawRecord | MoleculeError) -> dict[str, Any]:
        if isinstance(item, MoleculeError):  # a whole-file problem, found while splitting the input
            return error_row(task, unknown, item.record_id, item.code.value, item.message)
        try:
            if task == "caption":
                answer = client.caption(molecule_input(item), **decoding)
            else:
                answer = client.ask(molecule_input(item), question, **decoding)
        except grpc.RpcError as err:
            detail = error_detail(err)
            return error_row(task, unknown, item.record_id, detail.code, detail.message)
        return answer_row(task, answer, question, item.fmt)

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

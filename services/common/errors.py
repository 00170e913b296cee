"""Errors as gRPC statuses: a status code plus details "CODE: message" (CODE = molm3d error code).

Stages raise `ServiceError`. Called over gRPC (through Serve's proxy) the error becomes the call's
status; called by the gateway through a deployment handle it arrives as the same exception class, so
the gateway passes the status on unchanged. (Serve's proxy drops trailing metadata on failed calls,
so the details string is the one carrier of the reason; `ErrorDetail` is the structured form for
HTTP bodies and dead-letter records.)
"""

from __future__ import annotations

import grpc
from molm3d.v1 import common_pb2

from molm3d_core.errors import MoleculeError


class ServiceError(Exception):
    """A failed call: gRPC status code name (e.g. "INVALID_ARGUMENT") and its ErrorDetail bytes.

    Plain str/bytes arguments keep it picklable across Ray processes.
    """

    def __init__(self, code: str, detail: bytes) -> None:
        super().__init__(code, detail)
        self.code_name = code
        self.detail_bytes = detail

    @classmethod
    def make(
        cls, status: grpc.StatusCode, code: str, message: str, stage: str, record_id: str = "", retry_after_ms: int = 0
    ) -> ServiceError:
        detail = common_pb2.ErrorDetail(
            code=code, message=message, record_id=record_id or "", stage=stage, retry_after_ms=retry_after_ms
        )
        return cls(status.name, detail.SerializeToString())

    @classmethod
    def invalid(cls, err: MoleculeError, stage: str) -> ServiceError:
        return cls.make(grpc.StatusCode.INVALID_ARGUMENT, err.code.value, err.message, stage, err.record_id or "")

    @property
    def status(self) -> grpc.StatusCode:
        return grpc.StatusCode[self.code_name]

    @property
    def detail(self) -> common_pb2.ErrorDetail:
        return common_pb2.ErrorDetail.FromString(self.detail_bytes)

    def details_text(self) -> str:
        d = self.detail
        return f"{d.code}: {d.message}"

    def __str__(self) -> str:
        return f"{self.code_name}: {self.details_text()}"


def set_status(grpc_context, err: ServiceError) -> None:
    """Put `err` on a Serve gRPC context (status code and details)."""
    if grpc_context is None:
        return
    grpc_context.set_code(err.status)
    grpc_context.set_details(err.details_text())


def error_detail(rpc_error: grpc.RpcError) -> common_pb2.ErrorDetail:
    """The molm3d error code and message of a failed call, from its status details."""
    details = rpc_error.details() or ""
    code, sep, message = details.partition(": ")
    if not sep or not code.replace("_", "").isalnum():
        return common_pb2.ErrorDetail(code=rpc_error.code().name.lower(), message=details)
    return common_pb2.ErrorDetail(code=code, message=message)

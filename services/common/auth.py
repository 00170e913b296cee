"""Bearer-token check for public calls (gRPC metadata or HTTP header `authorization`).

The token comes from the environment variable named in the stage's user_config (`token_env`,
default MOLM3D_API_TOKEN), never from the config file itself. No token configured = open, which is
only safe because everything binds 127.0.0.1 by default; Serve's gRPC proxy listens on all
interfaces, so set a token whenever the machine is reachable.
"""

from __future__ import annotations

import hmac
import os

import grpc

from .errors import ServiceError

DEFAULT_TOKEN_ENV = "MOLM3D_API_TOKEN"


def configured_token(token_env: str = DEFAULT_TOKEN_ENV) -> str | None:
    return os.environ.get(token_env) or None


def bearer_ok(header: str | None, token: str | None) -> bool:
    if token is None:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())


def check_grpc(grpc_context, token: str | None, stage: str) -> None:
    """Raise UNAUTHENTICATED unless the call carries the token. Handle calls (no context) are internal."""
    if grpc_context is None or token is None:
        return
    header = dict(grpc_context.invocation_metadata()).get("authorization")
    if not bearer_ok(header, token):
        raise ServiceError.make(
            grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", "missing or wrong `authorization: Bearer` token", stage
        )

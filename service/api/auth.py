"""Bearer-token authentication for the API (constant-time comparison)."""

from __future__ import annotations

import hmac

from flask import Flask, request

from service.api.context import settings
from service.core.errors import Unauthorized

# Paths that answer without a token: probes from load balancers and platforms.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def token_is_valid(candidate: str, tokens: tuple[str, ...]) -> bool:
    """Return True when `candidate` equals one of `tokens`; compares against all in constant time."""
    given = candidate.encode("utf-8", "surrogateescape")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token.encode("utf-8"))
    return matched


def bearer_token() -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def require_token() -> None:
    """Refuse a request to a protected path that lacks a valid bearer token."""
    # The dashboard has its own Basic auth (service.dashboard.mount); browsers cannot send bearer tokens.
    if request.path in PUBLIC_PATHS or request.path == "/dashboard" or request.path.startswith("/dashboard/"):
        return
    token = bearer_token()
    if token is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not token_is_valid(token, settings().api_tokens):
        raise Unauthorized("invalid bearer token")


def init_app(app: Flask) -> None:
    """Guard every route but the public probes (the dashboard has its own Basic auth)."""
    app.before_request(require_token)

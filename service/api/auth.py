"""Authentication and authorization: a bearer token names a principal (constant-time comparison), and the
route's scope (service.api.scopes) decides whether it may go on.

The principal of the request is `flask.g.principal` (a service.core.config.ApiToken) once authenticated.
"""

from __future__ import annotations

import hmac

from flask import Flask, g, request

from service.api.context import settings
from service.api.scopes import route_for
from service.core.config import ApiToken
from service.core.errors import Forbidden, Unauthorized

DASHBOARD = "/dashboard"


def authenticate(candidate: str | None, tokens: tuple[ApiToken, ...]) -> ApiToken | None:
    """Return the token `candidate` equals, or None; every token is compared, in constant time."""
    if candidate is None:
        return None
    given = candidate.encode("utf-8", "surrogateescape")
    found = None
    for token in tokens:
        if hmac.compare_digest(given, token.secret.encode("utf-8")):
            found = token  # no early exit: the time taken does not tell which token matched
    return found


def authorize(token: ApiToken) -> None:
    """Remember `token` as the request's principal; Forbidden (403, naming the scope) when it lacks the route's."""
    g.principal = token
    if request.endpoint is None or request.url_rule is None:
        return  # no route matched: the 404 or 405 follows
    needed = route_for(request.endpoint).scope
    if needed is not None and not token.allows(needed):
        raise Forbidden(f"this token lacks the {needed!r} scope that {request.method} {request.url_rule.rule} needs")


def bearer_token(header: str | None = None) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header (this request's by default), or None."""
    if header is None:
        header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def is_public() -> bool:
    """Return True for the probes: routes whose scope is None."""
    return request.endpoint is not None and route_for(request.endpoint).scope is None


def require_token() -> None:
    """Refuse an API request without a valid bearer token (401) or without the route's scope (403)."""
    # The dashboard has its own Basic auth (service.dashboard.mount); browsers cannot send bearer tokens.
    if is_public() or request.path == DASHBOARD or request.path.startswith(DASHBOARD + "/"):
        return
    token = bearer_token()
    if token is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    principal = authenticate(token, settings().api_tokens)
    if principal is None:
        raise Unauthorized("invalid bearer token")
    authorize(principal)


def init_app(app: Flask) -> None:
    """Guard every route but the public probes (the dashboard has its own Basic auth)."""
    app.before_request(require_token)

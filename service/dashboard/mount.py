"""Dashboard: rq-dashboard mounted at /dashboard/, behind Basic auth, with the service's safety around it.

rq-dashboard leaves authentication to its host (its docstring says so).
Every /dashboard path, static files included, needs a valid API token as the
Basic password. Around that: state changes need same-origin proof
(service.dashboard.origin), every response carries the security headers
(service.dashboard.headers), and rq-dashboard reads through the service's
JSON readers (service.dashboard.seam). docs/dashboard.md lists every route.
"""

from __future__ import annotations

import base64
import binascii

import rq_dashboard
from flask import Flask, Response, request
from rq_dashboard.web import setup_rq_connection

from service.api.auth import authenticate, authorize
from service.api.errors import error_response
from service.core.config import ApiToken, Settings
from service.dashboard import headers, origin, seam

PREFIX = origin.PREFIX


def basic_password() -> str | None:
    """Return the password of an `Authorization: Basic` header, or None."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


def guard_dashboard(tokens: tuple[ApiToken, ...]) -> Response | None:
    """Before every request: 401 without a token as Basic password, 403 without the route's scope (pages
    need read, actions operate); the same-origin check of state changes runs after it (service.dashboard.origin)."""
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        return None
    principal = authenticate(basic_password(), tokens)
    if principal is None:
        response = error_response(401, "unauthorized", "the dashboard needs an API token as the Basic password")
        response.headers["WWW-Authenticate"] = 'Basic realm="dashboard", charset="UTF-8"'
        return response
    authorize(principal)
    return None


def init_app(app: Flask, settings: Settings) -> None:
    """Mount rq-dashboard, the schedules view and the charts under /dashboard: guarded, same-origin, JSON-only."""
    from service.dashboard import charts as dashboard_charts
    from service.dashboard import schedules as dashboard_schedules

    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url
    headers.init_app(app)
    app.before_request(lambda: guard_dashboard(app.extensions["settings"].api_tokens))
    app.register_blueprint(dashboard_schedules.bp, url_prefix=PREFIX)
    app.register_blueprint(dashboard_charts.bp, url_prefix=PREFIX)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)
    seam.install(app)
    with app.app_context():
        setup_rq_connection(app)

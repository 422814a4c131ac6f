"""Dashboard: rq-dashboard mounted at /dashboard/, behind Basic auth and a cross-site guard.

rq-dashboard leaves authentication to its host (its docstring says so) and
changes state on requests a browser can be tricked into sending with the
saved Basic credentials. Every /dashboard path, static files included,
needs a valid API token as the Basic password, and a state-changing request
whose Origin or Referer names another site is refused.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

import rq_dashboard
from flask import Flask, Response, current_app, request
from rq.serializers import JSONSerializer
from rq_dashboard.web import setup_rq_connection

from service.api.auth import authenticate, authorize
from service.api.errors import error_response
from service.core.config import ApiToken, Settings

PREFIX = "/dashboard"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# rq-dashboard's only GET route that changes state: requeue every failed job of a queue.
STATE_CHANGING_GETS = ("/dashboard/requeue/",)


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


def cross_site() -> bool:
    """Return True when the request's Origin or Referer names a site other than this host."""
    for header in ("Origin", "Referer"):
        value = request.headers.get(header)
        if value:
            source = urlsplit(value)
            if value == "null" or f"{source.scheme}://{source.netloc}" != request.host_url.rstrip("/"):
                return True
    return False


def guard_dashboard(tokens: tuple[ApiToken, ...]) -> Response | None:
    """Before every request: 401 without a token as Basic password, 403 without the route's scope (pages
    need read, actions operate) or for a cross-site state change."""
    if not (request.path == PREFIX or request.path.startswith(PREFIX + "/")):
        return None
    principal = authenticate(basic_password(), tokens)
    if principal is None:
        response = error_response(401, "unauthorized", "the dashboard needs an API token as the Basic password")
        response.headers["WWW-Authenticate"] = 'Basic realm="dashboard", charset="UTF-8"'
        return response
    authorize(principal)
    changes_state = request.method not in SAFE_METHODS or request.path.startswith(STATE_CHANGING_GETS)
    if changes_state and cross_site():
        return error_response(403, "forbidden", "cross-site requests may not change the dashboard's state")
    return None


def init_app(app: Flask, settings: Settings) -> None:
    """Mount rq-dashboard and the schedules view under /dashboard, both guarded."""
    from service.dashboard import schedules as dashboard_schedules

    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url
    # Jobs are JSON; rq-dashboard would otherwise unpickle job data.
    rq_dashboard.web.config.serializer = JSONSerializer
    # rq-dashboard builds a client from the URL on every request, without
    # timeouts or the TLS files; it gets the app's one client instead, which
    # also follows a Sentinel failover.
    rq_dashboard.web.from_url = lambda url, **_: (None, current_app.extensions["redis"])
    with app.app_context():
        setup_rq_connection(app)
    app.before_request(lambda: guard_dashboard(app.extensions["settings"].api_tokens))
    app.register_blueprint(dashboard_schedules.bp, url_prefix=PREFIX)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)

"""Origin: a dashboard state change must prove it comes from the dashboard's own pages, and is never a GET.

Browsers resend saved Basic credentials with any request to the site,
whoever's page makes it, so the credentials prove nothing about intent. A
state change is accepted only with a same-origin `Origin` (or, without one,
`Referer`) header; neither is a 403. A route that changes state answers a
GET with 405, so no link or image can trigger it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, request

from service.api.errors import error_response

PREFIX = "/dashboard"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Every dashboard route that changes state (all POST only); the route table
# in docs/dashboard.md lists them, and a test checks it against the app.
STATE_CHANGING_ENDPOINTS = frozenset(
    {
        "rq_dashboard.delete_job_view",
        "rq_dashboard.requeue_job_view",
        "rq_dashboard.requeue_all",
        "rq_dashboard.empty_queue",
        "rq_dashboard.compact_queue",
        "dashboard_schedules.schedule_action",
    }
)
DEFAULT_PORTS = {"http": 80, "https": 443}


def in_dashboard() -> bool:
    return request.path == PREFIX or request.path.startswith(PREFIX + "/")


def changes_state() -> bool:
    """True for a dashboard request that would change state: an unsafe method, or a state-changing route."""
    if request.method == "OPTIONS":  # answered by Flask with the allowed methods; no view runs
        return False
    return request.method not in SAFE_METHODS or request.endpoint in STATE_CHANGING_ENDPOINTS


def origin_of(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of `url` with the scheme's default port filled in; None when it names no origin."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme not in DEFAULT_PORTS:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def same_origin() -> bool:
    """True when the request's Origin, or without one its Referer, is this server's origin (as the client sees it)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") != "same-origin":
        return False
    source = request.headers.get("Origin") or request.headers.get("Referer")
    return source is not None and origin_of(source) is not None and origin_of(source) == origin_of(request.host_url)


def refuse_unsafe_request() -> Response | None:
    """Before every dashboard request (after auth): 405 for a GET that changes state, 403 without same-origin proof."""
    if not in_dashboard() or not changes_state():
        return None
    if request.method in SAFE_METHODS:
        response = error_response(405, "method_not_allowed", "this dashboard route changes state: POST only")
        response.headers["Allow"] = "POST"
        return response
    if not same_origin():
        return error_response(403, "forbidden", "a dashboard state change needs a same-origin Origin or Referer header")
    return None


def init_app(app: Flask) -> None:
    """Refuse unsafe dashboard requests (after authentication and the path check: a bad id is a 404 first)."""
    app.before_request(refuse_unsafe_request)

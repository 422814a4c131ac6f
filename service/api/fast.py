"""Fast path: POST /jobs and POST /jobs/batch served beneath Flask, by the functions its views and hooks use.

For an enqueue, Flask's request context, routing, eight request hooks and Response object cost more CPU
than the enqueue itself (docs/benchmarks.md). A request that needs none of them - a bearer token with
the route's scope, an application/json body within the size limit, no query string, no replica wait
configured - is answered here: the same token check, body parsing, validation and enqueue, the same
answer, request id and security headers. Any other request, and any whose body the checks refuse
(400, 413, 415, 422), reaches Flask with its body untouched, so every refusal is answered, audited and
logged by one implementation; only the enqueue's own outcome (written, or refused by Redis or a full
lane) is answered here, through the same error mapping.

It serves only while the app's request hooks are exactly HOOKS, each done here or doing nothing for
these two routes (checked whenever the hooks change). Any other hook turns the fast path off, with a
warning, instead of being skipped.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from service.api import errors
from service.api.audit import request_id_for
from service.api.auth import authenticate, bearer_token
from service.api.body import MAX_BODY_BYTES, decode, parse_document
from service.api.jobs import enqueued, job_requests
from service.api.render import batch_text
from service.api.scopes import route_for
from service.dashboard.headers import api_headers
from service.jobs import enqueue
from service.jobs.schemas import BatchRequest, JobRequest

log = logging.getLogger(__name__)

# Path -> (Flask endpoint, body model, batch?).
ROUTES = {"/jobs": ("jobs.create_job", JobRequest, False), "/jobs/batch": ("jobs.create_jobs", BatchRequest, True)}
# The app's request hooks, and why a request served here needs none of them.
HOOKS = {
    "before_request_funcs": {
        "service.api.audit.assign_request_id",  # done here: request_id_for
        "service.api.auth.require_token",  # done here: authenticate, the route's scope; a refusal goes to Flask
        "service.dashboard.mount.init_app.<locals>.<lambda>",  # /dashboard paths only
        "service.dashboard.seam.check_view_args",  # rq-dashboard's blueprint only
        "service.api.paths.check_path_arguments",  # these routes take no path arguments
        "service.dashboard.origin.refuse_unsafe_request",  # /dashboard paths only
    },
    "after_request_funcs": {
        "service.api.audit.record_and_tag",  # audits refusals and audited routes (enqueues are not); X-Request-Id
        "service.dashboard.headers.add_security_headers",  # done here: api_headers
    },
    "teardown_request_funcs": set(),
    "url_value_preprocessors": set(),
}
# The security headers of every API answer (the same on each).
SECURITY_HEADERS = tuple(api_headers().items())
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def request_hooks(app: Flask) -> dict[str, list[Callable[..., Any]]]:
    """The app-wide and jobs-blueprint request hooks of `app`, by kind."""
    return {kind: [f for key in (None, "jobs") for f in getattr(app, kind).get(key, ())] for kind in HOOKS}


def hook_names(hooks: dict[str, list[Callable[..., Any]]]) -> dict[str, set[str]]:
    return {kind: {f"{f.__module__}.{f.__qualname__}" for f in found} for kind, found in hooks.items()}


def install(app: Flask) -> None:
    """Put the fast path in front of `app` (not when every write waits for replicas: a hook does that)."""
    if app.extensions["settings"].min_replicas_ack == 0:
        app.wsgi_app = FastEnqueue(app, app.wsgi_app)  # type: ignore[method-assign]


class FastEnqueue:
    """The WSGI app in front of Flask's: enqueue requests that need nothing else are answered here."""

    def __init__(self, app: Flask, flask: WSGIApp) -> None:
        self.app = app
        self.flask = flask
        self.settings = app.extensions["settings"]
        self.redis = app.extensions["redis"]
        self.dumps = app.json.dumps
        self.checked: tuple[int, ...] | None = None  # the hooks last checked, by identity
        self.serving = False

    def hooks_checked(self) -> bool:
        """True when the app's request hooks are HOOKS (named again only when they changed)."""
        hooks = request_hooks(self.app)
        seen = tuple(id(f) for found in hooks.values() for f in found)
        if seen != self.checked:
            self.checked, self.serving = seen, hook_names(hooks) == HOOKS
            if not self.serving:
                log.warning("fast path for POST /jobs off: the app's request hooks are not those it stands in for")
        return self.serving

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        route = ROUTES.get(environ.get("PATH_INFO", "")) if environ.get("REQUEST_METHOD") == "POST" else None
        if route is not None and not self.hooks_checked():
            route = None
        length = self.body_length(environ) if route is not None and self.plain(environ, route[0]) else None
        if route is None or length is None:
            return self.flask(environ, start_response)
        raw = environ["wsgi.input"].read(length)
        try:
            document = parse_document(route[1], decode(raw))
            if route[2] and document.on_complete is not None:
                raise LookupError("a batch with on_complete: Flask's view opens it")
            requests = job_requests(document)
            planned = enqueue.plan_many(requests, batch=route[2], limits=self.settings.limits)
        except Exception:  # a refusal (or a fault) before anything is written: Flask answers it, as any other
            environ["wsgi.input"] = io.BytesIO(raw)
            return self.flask(environ, start_response)
        try:
            outcomes = enqueue.commit(self.redis, planned, self.settings.limits.queue_length)
            text = batch_text(self.dumps, outcomes, None) if route[2] else None
            body, status = (None, 202) if text is not None else enqueued(outcomes, route[2])  # a batch is 202
            headers: dict[str, str] = {}
        except Exception as exc:  # the write's own outcome (a full lane, Redis refusing) is answered here
            (status, body, headers), text = errors.answer_for(exc), None
        return self.answer(environ, start_response, status, self.dumps(body) if text is None else text, headers)

    def plain(self, environ: dict[str, Any], endpoint: str) -> bool:
        """True when the request carries a token with the route's scope, a JSON body and no query string."""
        media_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip()
        if environ.get("QUERY_STRING") or media_type != "application/json":
            return False
        token = authenticate(bearer_token(environ.get("HTTP_AUTHORIZATION", "")), self.settings.api_tokens)
        needed = route_for(endpoint).scope
        return token is not None and (needed is None or token.allows(needed))

    @staticmethod
    def body_length(environ: dict[str, Any]) -> int | None:
        """The body's declared length when it is one the API accepts (1 to MAX_BODY_BYTES); None otherwise."""
        text = environ.get("CONTENT_LENGTH", "")
        length = int(text) if text.isascii() and text.isdigit() else 0
        return length if 0 < length <= MAX_BODY_BYTES else None

    @staticmethod
    def answer(
        environ: dict[str, Any], start_response: StartResponse, status: int, text: str, headers: dict[str, str]
    ) -> list[bytes]:
        data = (text + "\n").encode()
        start_response(
            f"{status} {HTTP_STATUS_CODES[status].upper()}",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                *headers.items(),
                ("X-Request-Id", request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))),
                *SECURITY_HEADERS,
            ],
        )
        return [data]

"""Fast path: POST /jobs, POST /jobs/batch and PUT /schedules/<id> served beneath Flask, by the functions its
views and hooks use.

For an enqueue or a schedule upsert, Flask's request context, routing, eight request hooks and Response
object cost about as much CPU as the write itself (docs/benchmarks.md). A request that needs none of them -
a bearer token with the route's scope, an application/json body within the size limit, no query string,
no replica wait configured - is answered here: the same token check, path check, body parsing,
validation and write, the same answer, audit event, request id and security headers. Any other request,
and any whose body the checks refuse (400, 413, 415, 422), reaches Flask with its body untouched, so
every refusal is answered, audited and logged by one implementation; only the write's own outcome
(written, or refused by Redis, a full lane or a cap) is answered here, through the same error mapping.

It serves only while the app's request hooks are exactly HOOKS, each done here or doing nothing for
these routes (checked whenever the hooks change). Any other hook turns the fast path off, with a
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
from service.api.audit import event_of, request_id_for, settle
from service.api.auth import authenticate, bearer_token
from service.api.body import MAX_BODY_BYTES, decode, parse_document
from service.api.jobs import enqueued, job_requests
from service.api.paths import RULES
from service.api.render import batch_text
from service.api.scopes import route_for
from service.core.config import ApiToken
from service.dashboard.headers import api_headers
from service.jobs import enqueue
from service.jobs.schemas import BatchRequest, JobRequest
from service.ops.audit import AuditEvent, RideAlong
from service.schedules import operations as schedules
from service.schedules.spec import ScheduleSpec

log = logging.getLogger(__name__)

# Path -> (Flask endpoint, body model, batch?) of the enqueue routes (POST).
ROUTES = {"/jobs": ("jobs.create_job", JobRequest, False), "/jobs/batch": ("jobs.create_jobs", BatchRequest, True)}
# PUT /schedules/<schedule_id>: its path prefix, endpoint and rule (the audit event's target names the rule).
SCHEDULE, PUT_SCHEDULE, PUT_RULE = "/schedules/", "schedules.put_schedule", "/schedules/<schedule_id>"
# The app's request hooks, and why a request served here needs none of them.
HOOKS = {
    "before_request_funcs": {
        "service.api.audit.assign_request_id",  # done here: request_id_for
        "service.api.auth.require_token",  # done here: authenticate, the route's scope; a refusal goes to Flask
        "service.dashboard.mount.init_app.<locals>.<lambda>",  # /dashboard paths only
        "service.dashboard.seam.check_view_args",  # rq-dashboard's blueprint only
        "service.api.paths.check_path_arguments",  # done here: the schedule id's rule; a refusal goes to Flask
        "service.dashboard.origin.refuse_unsafe_request",  # /dashboard paths only
    },
    "after_request_funcs": {
        "service.api.audit.record_and_tag",  # done here: settle (enqueues make no event); X-Request-Id
        "service.dashboard.headers.add_security_headers",  # done here: api_headers
    },
    "teardown_request_funcs": set(),
    "url_value_preprocessors": set(),
}
BLUEPRINTS = (None, "jobs", "schedules")  # the app's own hooks and those of the routes' blueprints
# The security headers of every API answer (the same on each).
SECURITY_HEADERS = tuple(api_headers().items())
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def request_hooks(app: Flask) -> dict[str, list[Callable[..., Any]]]:
    """The request hooks of `app` and of the routes' blueprints, by kind."""
    return {kind: [f for key in BLUEPRINTS for f in getattr(app, kind).get(key, ())] for kind in HOOKS}


def hook_names(hooks: dict[str, list[Callable[..., Any]]]) -> dict[str, set[str]]:
    return {kind: {f"{f.__module__}.{f.__qualname__}" for f in found} for kind, found in hooks.items()}


def install(app: Flask) -> None:
    """Put the fast path in front of `app` (not when every write waits for replicas: a hook does that)."""
    if app.extensions["settings"].min_replicas_ack == 0:
        app.wsgi_app = FastPath(app, app.wsgi_app)  # type: ignore[method-assign]


class FastPath:
    """The WSGI app in front of Flask's: writes that need nothing else are answered here."""

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
                log.warning(
                    "fast path for POST /jobs and PUT /schedules off: the app's request hooks are not those it knows"
                )
        return self.serving

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")
        route = ROUTES.get(path) if method == "POST" else None
        schedule_id = path[len(SCHEDULE) :] if method == "PUT" and path.startswith(SCHEDULE) else None
        if schedule_id is not None and not RULES["schedule_id"][0](schedule_id):
            schedule_id = None  # Flask answers its 404
        endpoint = route[0] if route is not None else PUT_SCHEDULE if schedule_id is not None else None
        if endpoint is None or not self.hooks_checked():
            return self.flask(environ, start_response)
        token = self.principal(environ, endpoint)
        length = self.body_length(environ) if token is not None else None
        if token is None or length is None:
            return self.flask(environ, start_response)
        raw = environ["wsgi.input"].read(length)
        try:
            document = decode(raw)
            if schedule_id is not None:
                if not isinstance(document, dict):
                    raise TypeError("not a JSON object: Flask's view answers it")
                spec = schedules.validated(schedule_id, document, self.settings.limits)
            else:
                assert route is not None
                body = parse_document(route[1], document)
                if route[2] and body.on_complete is not None:
                    raise LookupError("a batch with on_complete: Flask's view opens it")
                planned = enqueue.plan_many(job_requests(body), batch=route[2], limits=self.settings.limits)
        except Exception:  # a refusal (or a fault) before anything is written: Flask answers it, as any other
            environ["wsgi.input"] = io.BytesIO(raw)
            return self.flask(environ, start_response)
        if schedule_id is not None:
            return self.put_schedule(environ, start_response, token, schedule_id, spec)
        assert route is not None
        try:
            outcomes = enqueue.commit(self.redis, planned, self.settings.limits.queue_length)
            text = batch_text(self.dumps, outcomes, None) if route[2] else None
            answer, status = (None, 202) if text is not None else enqueued(outcomes, route[2])  # a batch is 202
            headers: dict[str, str] = {}
        except Exception as exc:  # the write's own outcome (a full lane, Redis refusing) is answered here
            (status, answer, headers), text = errors.answer_for(exc), None
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        text = self.dumps(answer) if text is None else text
        return self.answer(start_response, status, text, headers, request_id)

    def put_schedule(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        token: ApiToken,
        schedule_id: str,
        spec: ScheduleSpec,
    ) -> list[bytes]:
        """Store a validated spec as the view does, its audit event written by the upsert's own script."""
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        remote, values, limits = environ.get("REMOTE_ADDR", ""), {"schedule_id": schedule_id}, self.settings.limits

        def event(status: int) -> AuditEvent | None:
            return event_of(status, "PUT", PUT_RULE, PUT_SCHEDULE, values, token, remote, request_id)

        accepted = event(200)  # the route is audited: an event
        ride = RideAlong(accepted, limits.audit_events) if accepted is not None else None
        try:
            answer, created = schedules.save(self.redis, schedule_id, spec, max_schedules=limits.schedules, audit=ride)
            status, headers = 201 if created else 200, {}
        except Exception as exc:  # the write's own outcome (the cap, a missing calendar, Redis) is answered here
            status, answer, headers = errors.answer_for(exc)
        settle(self.redis, event(status), ride, limits.audit_events)
        return self.answer(start_response, status, self.jsonify_text(answer), headers, request_id)

    def jsonify_text(self, obj: Any) -> str:
        """The text jsonify() writes for `obj`: indented in debug mode, else compact."""
        provider = self.app.json
        compact = getattr(provider, "compact", None)
        if (compact is None and self.app.debug) or compact is False:
            return self.dumps(obj, indent=2)
        return self.dumps(obj, separators=(",", ":"))

    def principal(self, environ: dict[str, Any], endpoint: str) -> ApiToken | None:
        """The request's token when it has the route's scope, with a JSON body and no query string; else None."""
        media_type = environ.get("CONTENT_TYPE", "").partition(";")[0].strip()
        if environ.get("QUERY_STRING") or media_type != "application/json":
            return None
        token = authenticate(bearer_token(environ.get("HTTP_AUTHORIZATION", "")), self.settings.api_tokens)
        needed = route_for(endpoint).scope
        return token if token is not None and (needed is None or token.allows(needed)) else None

    @staticmethod
    def body_length(environ: dict[str, Any]) -> int | None:
        """The body's declared length when it is one the API accepts (1 to MAX_BODY_BYTES); None otherwise."""
        text = environ.get("CONTENT_LENGTH", "")
        length = int(text) if text.isascii() and text.isdigit() else 0
        return length if 0 < length <= MAX_BODY_BYTES else None

    @staticmethod
    def answer(
        start_response: StartResponse, status: int, text: str, headers: dict[str, str], request_id: str
    ) -> list[bytes]:
        data = (text + "\n").encode()
        start_response(
            f"{status} {HTTP_STATUS_CODES[status].upper()}",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                *headers.items(),
                ("X-Request-Id", request_id),
                *SECURITY_HEADERS,
            ],
        )
        return [data]

"""The fast path for POST /jobs and /jobs/batch answers exactly as Flask does, serves only what needs nothing
else, and turns itself off when the app gains a request hook it does not stand in for."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from redis import Redis

from service import create_app
from service.api.fast import FastPath
from service.api.jobs import enqueued
from service.api.render import batch_text
from service.core.config import Limits, Settings
from service.core.connection import connect
from service.core.keys import AUDIT_KEY
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs import enqueue
from service.jobs.schemas import JobRequest
from service.schedules import operations as schedules
from tests.conftest import TOKEN

READER = "reader:read:reader-secret-0123456789"
JSON = "application/json"
ECHO = {"task": "diag.echo", "args": [1]}
# name: (path, body as sent, headers; default: the test token and JSON). Each is sent to both apps.
CASES: dict[str, tuple[str, Any, dict[str, str] | None]] = {
    "one job": ("/jobs", ECHO, None),
    "a batch": ("/jobs/batch", {"jobs": [ECHO, {"task": "diag.echo", "queue": "low"}]}, None),
    "charset in the media type": ("/jobs", ECHO, {"Content-Type": "application/json; charset=utf-8"}),
    "a query string": ("/jobs?x=1", ECHO, None),
    "a field of the wrong type": ("/jobs", {"task": "diag.echo", "args": {"a": 1}}, None),
    "an unknown task": ("/jobs", {"task": "os.system"}, None),
    "an internal task": ("/jobs", {"task": "hooks.webhook"}, None),
    "a bad batch entry": ("/jobs/batch", {"jobs": [ECHO, {"task": "diag.echo", "timeout": 0}]}, None),
    "an unknown parent": ("/jobs", {"task": "diag.echo", "depends_on": ["no-such-job"]}, None),
    "malformed JSON": ("/jobs", b'{"task": ', None),
    "duplicate keys": ("/jobs", b'{"task": "diag.echo", "task": "diag.fail"}', None),
    "not an object": ("/jobs", [ECHO], None),
    "too large": ("/jobs", {"task": "diag.echo", "args": ["x" * (1024 * 1024)]}, None),
    "a form": ("/jobs", b"task=diag.echo", {"Content-Type": "application/x-www-form-urlencoded"}),
    "no token": ("/jobs", ECHO, {"Authorization": ""}),
    "a wrong token": ("/jobs", ECHO, {"Authorization": "Bearer wrong-token-0123456789"}),
    "a token without the enqueue scope": ("/jobs", ECHO, {"Authorization": f"Bearer {READER.split(':')[2]}"}),
    "a full lane": ("/jobs/batch", {"jobs": [ECHO] * 4}, None),
}
FAST = {"one job", "a batch", "charset in the media type", "an unknown parent", "a full lane"}


class Recorder:
    """Flask's WSGI app behind the fast path, counting the requests that reach it."""

    def __init__(self, fast: FastPath) -> None:
        self.flask, self.calls = fast.flask, 0
        fast.flask = self

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.flask(environ, start_response)


@pytest.fixture
def apps(settings: Settings, connection: Redis) -> Iterator[tuple[Flask, Flask, Recorder]]:
    """The same service twice: with its fast path (and a recorder behind it), and with Flask alone."""
    limited = replace(settings, api_tokens=(TOKEN, READER), limits=Limits(queue_length=3, schedules=1))
    fast = create_app(limited, connection=connect(settings.redis_url, role="web"))
    flask = create_app(limited, connection=connect(settings.redis_url, role="web"))
    assert isinstance(fast.wsgi_app, FastPath) and isinstance(flask.wsgi_app, FastPath)
    flask.wsgi_app = flask.wsgi_app.flask  # type: ignore[method-assign]
    yield fast, flask, Recorder(fast.wsgi_app)
    for app in (fast, flask):
        app.extensions["redis"].connection_pool.disconnect()


def send(app: Flask, path: str, body: Any, headers: dict[str, str] | None, method: str = "POST") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": JSON, **(headers or {})}
    return app.test_client().open(path, method=method, data=data, headers={k: v for k, v in sent.items() if v})


def seen(response: Any) -> tuple[int, Any, dict[str, str]]:
    """What a client sees, without what differs on every request (ids, times, the request id)."""
    body = json.loads(response.get_data(as_text=True).replace(" ", ""))
    for job in body.get("jobs", [body]) if isinstance(body, dict) else []:
        for varying in ("id", "enqueued_at"):
            job.pop(varying, None)
    headers = {k: v for k, v in response.headers.items() if k not in ("Content-Length", "X-Request-Id")}
    assert len(response.headers["X-Request-Id"]) == 32
    return response.status_code, body, headers


@pytest.mark.parametrize("case", CASES)
def test_the_fast_path_answers_as_flask_does(case: str, apps: tuple[Flask, Flask, Recorder], connection: Redis) -> None:
    fast, flask, recorder = apps
    path, body, headers = CASES[case]
    answers = []
    for app in (fast, flask):
        connection.flushdb()
        answers.append(seen(send(app, path, body, headers)))
    assert answers[0] == answers[1]
    assert recorder.calls == (0 if case in FAST else 1), "the fast path served it" if recorder.calls else "Flask did"


def test_a_repeated_idempotency_key_and_a_reused_one_answer_as_flask_does(
    apps: tuple[Flask, Flask, Recorder], connection: Redis
) -> None:
    fast, flask, recorder = apps
    keyed = {**ECHO, "idempotency_key": "k-1"}
    answers = []
    for app in (fast, flask):
        connection.flushdb()
        first = send(app, "/jobs", keyed, None)
        again = send(app, "/jobs", keyed, None)
        reused = send(app, "/jobs", {**keyed, "args": [2]}, None)
        assert first.get_json()["id"] == again.get_json()["id"]
        answers.append([seen(first), seen(again), seen(reused)])
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [202, 200, 409] and recorder.calls == 0


def test_a_redis_that_is_full_or_gone_is_answered_as_flask_does(
    private_redis: EmbeddedRedis, settings: Settings
) -> None:
    for url in (private_redis.url, "redis://127.0.0.1:1/0"):
        server = replace(settings, redis_url=url)
        fast = create_app(server, connection=connect(url, role="web"))
        flask = create_app(server, connection=connect(url, role="web"))
        flask.wsgi_app = flask.wsgi_app.flask  # type: ignore[attr-defined, method-assign]
        if url == private_redis.url:
            connect(url, role="worker").config_set("maxmemory", 1)
        answers = [seen(send(app, "/jobs", ECHO, None)) for app in (fast, flask)]
        assert answers[0] == answers[1] and answers[0][0] == 503


def test_a_request_hook_it_does_not_know_turns_the_fast_path_off(
    apps: tuple[Flask, Flask, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    fast, _, recorder = apps
    assert send(fast, "/jobs", ECHO, None).status_code == 202 and recorder.calls == 0
    fast.before_request(lambda: None)  # say, a rate limit added later: the fast path must not skip it
    with caplog.at_level(logging.WARNING, logger="service.api.fast"):
        assert send(fast, "/jobs", ECHO, None).status_code == 202
    assert recorder.calls == 1 and "fast path for POST /jobs and PUT /schedules off" in caplog.text


def test_a_clients_request_id_is_echoed_as_flask_does(apps: tuple[Flask, Flask, Recorder]) -> None:
    fast, flask, recorder = apps
    for sent, echoed in (("lb-7f3a-0001", "lb-7f3a-0001"), ("bad id\t", None)):
        answers = [send(app, "/jobs", ECHO, {"X-Request-Id": sent}).headers["X-Request-Id"] for app in (fast, flask)]
        if echoed is not None:
            assert answers == [echoed, echoed]
        else:  # not an id: each answer carries a new one instead
            assert sent not in answers and all(len(answer) == 32 for answer in answers)
    assert recorder.calls == 0


# A batch whose jobs take several shapes (lanes, a group, a delay) and hold values the encoder escapes or sorts.
VARIED = [
    ECHO,
    {"task": "diag.echo", "args": ['é\n"', 1.5, None, {"b": 1, "a": [True]}], "kwargs": {"z": 1, "a": {"y": "☃"}}},
    {"task": "diag.echo", "queue": "low", "group": "g-1"},
    {"task": "diag.sleep", "args": [1], "delay": 5},
    {"task": "diag.echo", "args": [1e300, -0.0, 10**30]},
]


def test_a_batch_answer_is_the_text_the_json_provider_writes(
    apps: tuple[Flask, Flask, Recorder], connection: Redis
) -> None:
    fast, _, recorder = apps
    connection.flushdb()
    outcomes = enqueue.submit(connection, [JobRequest.model_validate(job) for job in VARIED], batch=True)
    body, _ = enqueued(outcomes, batch=True)
    assert batch_text(fast.json.dumps, outcomes, None) == fast.json.dumps(body)
    connection.flushdb()  # the apps' lanes hold 3 waiting jobs
    answer = send(fast, "/jobs/batch", {"jobs": VARIED[:3]}, None)
    assert answer.status_code == 202 and recorder.calls == 0
    assert [job["args"] for job in answer.get_json()["jobs"]] == [job.get("args", []) for job in VARIED[:3]]


# PUT /schedules/<id>: name: (path, body, headers, what is stored first). A fixed start keeps next_run_at fixed.
HOURLY = {"task": "diag.echo", "args": [1], "interval": 3600, "start_at": "2100-01-01T00:00:00Z"}
PUTS: dict[str, tuple[str, Any, dict[str, str] | None, dict[str, Any] | None]] = {
    "a new schedule": ("/schedules/s-1", HOURLY, None, None),
    "a replaced schedule": ("/schedules/s-1", {**HOURLY, "args": [2]}, None, HOURLY),
    "an identical body": ("/schedules/s-1", HOURLY, None, HOURLY),
    "the id in the body": ("/schedules/s-1", {**HOURLY, "id": "s-1"}, None, None),
    "a path that routes elsewhere": ("/schedules/preview", HOURLY, None, None),
    "a cron in a zone": (
        "/schedules/s-1",
        {"task": "diag.echo", "cron": "0 9 * * 1-5", "timezone": "Europe/Paris"},
        None,
        None,
    ),
    "past the cap (MAX_SCHEDULES 1)": ("/schedules/s-2", HOURLY, None, HOURLY),
    "a calendar that does not exist": ("/schedules/s-1", {**HOURLY, "skip_calendars": ["none"]}, None, None),
    "another id in the body": ("/schedules/s-1", {**HOURLY, "id": "s-2"}, None, None),
    "a bad field": ("/schedules/s-1", {**HOURLY, "interval": -1}, None, None),
    "an unknown task": ("/schedules/s-1", {**HOURLY, "task": "os.system"}, None, None),
    "not an object": ("/schedules/s-1", [HOURLY], None, None),
    "malformed JSON": ("/schedules/s-1", b'{"task": ', None, None),
    "an id the service never makes": ("/schedules/a.b", HOURLY, None, None),
    "a query string": ("/schedules/s-1?x=1", HOURLY, None, None),
    "a token without the operate scope": (
        "/schedules/s-1",
        HOURLY,
        {"Authorization": f"Bearer {READER.split(':')[2]}"},
        None,
    ),
    "no token": ("/schedules/s-1", HOURLY, {"Authorization": ""}, None),
}
PUT_FAST = {
    "a new schedule",
    "a replaced schedule",
    "an identical body",
    "the id in the body",
    "a path that routes elsewhere",
    "a cron in a zone",
    "past the cap (MAX_SCHEDULES 1)",
    "a calendar that does not exist",
}
STAMPS = re.compile(r'"(created_at|updated_at)":"[^"]*"')


@pytest.mark.parametrize("case", PUTS)
def test_a_schedule_put_answers_and_audits_as_flask_does(
    case: str, apps: tuple[Flask, Flask, Recorder], connection: Redis
) -> None:
    """The same bytes (but the times it was stored), headers and audit events; 201, 200, unchanged alike."""
    fast, flask, recorder = apps
    path, body, headers, stored = PUTS[case]
    answers = []
    for app in (fast, flask):
        connection.flushdb()
        if stored is not None:
            schedules.upsert(connection, "s-1", stored)
        answer = send(app, path, body, {"X-Request-Id": "client-id-0001", **(headers or {})}, method="PUT")
        events = [fields for _, fields in connection.xrange(AUDIT_KEY)]
        seen_headers = {k: v for k, v in answer.headers.items() if k != "Content-Length"}  # it counts the stamps
        answers.append((answer.status_code, STAMPS.sub("", answer.get_data(as_text=True)), seen_headers, events))
    assert answers[0] == answers[1]
    assert recorder.calls == (0 if case in PUT_FAST else 1), (
        "the fast path served it" if recorder.calls else "Flask did"
    )


def test_a_schedule_put_names_the_client_behind_trusted_proxies(settings: Settings, connection: Redis) -> None:
    """With TRUSTED_PROXY_HOPS, the fast path's audit event names the address the proxy forwarded."""
    app = create_app(replace(settings, trusted_proxy_hops=1), connection=connect(settings.redis_url, role="web"))
    connection.flushdb()
    answer = send(app, "/schedules/s-1", HOURLY, {"X-Forwarded-For": "203.0.113.7"}, method="PUT")
    assert answer.status_code == 201
    [(_, fields)] = connection.xrange(AUDIT_KEY)
    assert fields[b"remote_addr"] == b"203.0.113.7" and fields[b"action"] == b"schedule.put"
    app.extensions["redis"].connection_pool.disconnect()

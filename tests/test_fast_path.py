"""The fast path for POST /jobs and /jobs/batch answers exactly as Flask does, serves only what needs nothing
else, and turns itself off when the app gains a request hook it does not stand in for."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from redis import Redis

from service import create_app
from service.api.fast import FastEnqueue
from service.api.jobs import enqueued
from service.api.render import batch_text
from service.core.config import Limits, Settings
from service.core.connection import connect
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs import enqueue
from service.jobs.schemas import JobRequest
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

    def __init__(self, fast: FastEnqueue) -> None:
        self.flask, self.calls = fast.flask, 0
        fast.flask = self

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.flask(environ, start_response)


@pytest.fixture
def apps(settings: Settings, connection: Redis) -> Iterator[tuple[Flask, Flask, Recorder]]:
    """The same service twice: with its fast path (and a recorder behind it), and with Flask alone."""
    limited = replace(settings, api_tokens=(TOKEN, READER), limits=Limits(queue_length=3))
    fast = create_app(limited, connection=connect(settings.redis_url, role="web"))
    flask = create_app(limited, connection=connect(settings.redis_url, role="web"))
    assert isinstance(fast.wsgi_app, FastEnqueue) and isinstance(flask.wsgi_app, FastEnqueue)
    flask.wsgi_app = flask.wsgi_app.flask  # type: ignore[method-assign]
    yield fast, flask, Recorder(fast.wsgi_app)
    for app in (fast, flask):
        app.extensions["redis"].connection_pool.disconnect()


def send(app: Flask, path: str, body: Any, headers: dict[str, str] | None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": JSON, **(headers or {})}
    return app.test_client().post(path, data=data, headers={k: v for k, v in sent.items() if v})


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
    assert recorder.calls == 1 and "fast path for POST /jobs off" in caplog.text


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

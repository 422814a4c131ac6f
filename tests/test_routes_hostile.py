"""Every route, API and dashboard, walked with hostile path ids and query values.

The routes come from `app.url_map` and the query parameters from /openapi.json,
so a new route or parameter is walked without touching this file. Whatever the
value (newline, CR, NUL, a Unicode digit, 10 kB, `..`, an encoded slash), the
answer is never a 500, always the error shape, a 404 for a path id and a 422
naming the parameter for a query value, and Redis is exactly as it was.
It runs through Flask's test client and through a real gunicorn.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from redis import Redis

from service.dev.embedded_redis import free_port
from tests.conftest import TOKEN
from tests.helpers import snapshot
from tests.processes import Processes

# Percent-encoded as they travel in a URL.
HOSTILE_IDS = {
    "newline": "abc%0A",
    "carriage return": "abc%0D",
    "NUL": "abc%00",
    "Unicode digit": "%C2%B2",
    "Arabic-Indic digit": "%D9%A3",
    "10 kB": "x" * 10_240,
    "dot-dot": "..",
    "encoded slash": "a%2Fb",
}
HOSTILE_NUMBERS = {
    **HOSTILE_IDS,
    "fullwidth one": "%EF%BC%91",
    "number and newline": "5%0A",
    "plus sign": "%2B5",
    "underscore": "5_0",
    "leading space": "%205",
    "decimal": "5.0",
    "zero": "0",
    "negative": "-1",
    "30 digits": "9" * 30,
}
# A valid value of each path argument; a rule with an argument missing here fails the walk.
EXAMPLES = {
    "job_id": "no-such-job",
    "batch_id": "no-such-batch",
    "schedule_id": "nightly",
    "calendar_id": "holidays",
    "queue_name": "default",
    "registry_name": "failed",
    "per_page": "10",
    "order": "asc",
    "page": "1",
    "instance_number": "0",
    "action": "pause",
    "filename": "css/bootstrap.min.css",
}
PLACEHOLDER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
SCHEDULE = {"task": "diag.echo", "cron": "0 3 * * *"}
Send = Callable[[str, str], tuple[int, Any]]


def url_of(rule: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], rule)


def headers_for(path: str, origin: str) -> dict[str, str]:
    """An admin token (Bearer for the API, Basic for the dashboard), same-origin, a JSON body."""
    if path.startswith("/dashboard"):
        auth = "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    else:
        auth = f"Bearer {TOKEN}"
    return {
        "Authorization": auth,
        "Origin": origin,
        "Sec-Fetch-Site": "same-origin",
        "Content-Type": "application/json",
    }


def hostile_paths(app: Flask) -> Iterator[tuple[str, str, str]]:
    """(method, path, what) for every route, method and path argument, one argument hostile at a time."""
    for rule in app.url_map.iter_rules():
        names = PLACEHOLDER.findall(rule.rule)
        assert set(names) <= set(EXAMPLES), f"{rule.rule}: give EXAMPLES a valid value of {set(names) - set(EXAMPLES)}"
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for name in names:
                for what, value in HOSTILE_IDS.items():
                    yield method, url_of(rule.rule, {**EXAMPLES, name: value}), f"{rule.endpoint} {name}={what}"


def hostile_queries(app: Flask, client: Any) -> Iterator[tuple[str, str, str, str]]:
    """(method, path, parameter, what) for every query parameter /openapi.json documents."""
    document = client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    assert document["paths"], "the OpenAPI document lists no paths"
    for template, operations in document["paths"].items():
        path = re.sub(r"\{([^}]+)\}", lambda m: EXAMPLES[m.group(1)], template)
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    numeric = "integer" in json.dumps(parameter["schema"])
                    for what, value in (HOSTILE_NUMBERS if numeric else HOSTILE_IDS).items():
                        yield method.upper(), f"{path}?{parameter['name']}={value}", parameter["name"], what


def assert_error_shape(status: int, body: Any, what: str) -> None:
    assert status != 500 and 400 <= status < 500, f"{what}: {status} {str(body)[:200]}"
    assert isinstance(body, dict) and set(body) == {"error"}, f"{what}: {str(body)[:200]}"
    assert body["error"]["code"] and body["error"]["message"], what


@pytest.fixture
def seeded(client: Any, connection: Redis) -> Redis:
    """Something in Redis to keep unchanged: a queued job and a schedule."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/jobs", json={"task": "diag.echo"}, headers=auth).status_code == 202
    assert client.put("/schedules/nightly", json=SCHEDULE, headers=auth).status_code == 201
    return connection


def flask_send(client: Any, origin: str = "http://localhost") -> Send:
    def send(method: str, path: str) -> tuple[int, Any]:
        body = json.dumps(SCHEDULE) if method in ("POST", "PUT", "DELETE") else None
        with client.open(path, method=method, data=body, headers=headers_for(path, origin)) as response:
            return response.status_code, response.get_json(silent=True)

    return send


def gunicorn_send(port: int) -> Send:
    origin = f"http://127.0.0.1:{port}"

    def send(method: str, path: str) -> tuple[int, Any]:
        body = json.dumps(SCHEDULE) if method in ("POST", "PUT", "DELETE") else None
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers_for(path, origin))
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw[:200]

    return send


def walk_paths(app: Flask, send: Send, connection: Redis, skip: frozenset[str] = frozenset()) -> int:
    before = snapshot(connection)
    walked = 0
    for method, path, what in hostile_paths(app):
        if any(s in what for s in skip):
            continue
        status, body = send(method, path)
        assert_error_shape(status, body, f"{method} {what}")
        assert status == 404, f"{method} {what}: {status} {body}"
        assert snapshot(connection) == before, f"{method} {what} changed Redis"
        walked += 1
    return walked


def test_every_route_answers_a_hostile_path_id_with_a_404_and_changes_nothing(
    app: Flask, client: Any, seeded: Redis
) -> None:
    walked = walk_paths(app, flask_send(client), seeded)
    assert walked >= 8 * 30  # every route with an argument, every hostile value


def test_every_documented_query_parameter_refuses_a_hostile_value_with_a_422_naming_it(
    app: Flask, client: Any, seeded: Redis
) -> None:
    send = flask_send(client)
    before = snapshot(seeded)
    parameters = set()
    for method, path, parameter, what in hostile_queries(app, client):
        status, body = send(method, path)
        assert_error_shape(status, body, f"{method} {path[:80]} ({what})")
        assert status == 422, f"{method} {path[:80]} ({what}): {status} {body}"
        assert body["error"]["message"].startswith(f"{parameter}:"), body
        assert snapshot(seeded) == before, f"{method} {path[:80]} changed Redis"
        parameters.add((path.split("?")[0], parameter))
    assert {("/jobs", "limit"), ("/schedules", "limit"), ("/schedules/nightly/preview", "count")} <= parameters


def test_every_documented_query_parameter_given_twice_is_refused_naming_it(
    app: Flask, client: Any, seeded: Redis
) -> None:
    """`?status=queued&status=failed` would silently mean one of them."""
    send = flask_send(client)
    before = snapshot(seeded)
    asked = {(method, path.split("?")[0], parameter) for method, path, parameter, _ in hostile_queries(app, client)}
    assert ("GET", "/jobs", "status") in asked
    for method, path, parameter in asked:
        status, body = send(method, f"{path}?{parameter}=2&{parameter}=2")
        assert_error_shape(status, body, f"{method} {path} {parameter} twice")
        assert status == 422 and body["error"]["message"] == f"{parameter}: give this parameter once", body
        assert snapshot(seeded) == before


def test_dashboard_schedules_page_refuses_a_hostile_cursor(client: Any, seeded: Redis) -> None:
    send = flask_send(client)
    for what, value in HOSTILE_IDS.items():
        status, body = send("GET", f"/dashboard/schedules?cursor={value}")
        assert_error_shape(status, body, what)
        assert status == 422 and body["error"]["message"].startswith("cursor:"), (what, body)


def test_the_issue_examples_are_refused(client: Any, seeded: Redis) -> None:
    send = flask_send(client)
    assert send("PUT", "/schedules/abc%0A")[0] == 404
    assert send("GET", "/jobs/x%0A")[0] == 404
    assert send("POST", "/jobs/x%0A/cancel")[0] == 404
    status, body = send("GET", "/schedules?limit=%C2%B2")
    assert status == 422 and body["error"]["message"].startswith("limit:")
    assert not seeded.exists("svc:schedule:abc\n")


@pytest.mark.slow
def test_real_gunicorn_answers_hostile_path_ids_with_a_404_and_changes_nothing(
    app: Flask, client: Any, seeded: Redis, processes: Processes
) -> None:
    port = free_port()
    processes.web(port)
    send = gunicorn_send(port)
    # gunicorn itself refuses a request line over 4 KB (414, its own page): the 10 kB ids never reach the app.
    walked = walk_paths(app, send, seeded, skip=frozenset({"10 kB"}))
    assert walked >= 7 * 30
    before = snapshot(seeded)
    status, _ = send("GET", "/jobs/" + "x" * 10_240)
    assert status == 414 and snapshot(seeded) == before
    for path in ("/jobs/a%2F..%2F..%2Fschedules", "/schedules/..", "/dashboard/static/..%2F..%2Fweb.py"):
        status, body = send("GET", path)
        assert status == 404 and set(body) == {"error"}, (path, status, body)

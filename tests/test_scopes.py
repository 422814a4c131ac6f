"""Scoped tokens: one table gives every route its scope; a token without it gets 403 naming it, route by route."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.api.scopes import ROUTES
from service.core.config import SCOPES, Settings
from service.core.connection import connect
from tests.conftest import TOKEN
from tests.helpers import snapshot
from tests.test_routes_hostile import EXAMPLES, SCHEDULE, url_of

# One token per scope, plus the bare test token (every scope).
SCOPED = {scope: f"{scope}-only:{scope}:{scope}-secret-0123456789" for scope in SCOPES}


def secret(scope: str) -> str:
    return SCOPED[scope].split(":", 2)[2]


@pytest.fixture
def scoped_app(settings: Settings, connection: Redis) -> Flask:
    scoped = Settings(
        redis_url=settings.redis_url, api_tokens=(TOKEN, *SCOPED.values()), task_modules=settings.task_modules
    )
    return create_app(scoped, connection=connect(settings.redis_url, role="web"))


def headers(path: str, token: str) -> dict[str, str]:
    if path.startswith("/dashboard"):
        auth = "Basic " + base64.b64encode(f"ops:{token}".encode()).decode()
    else:
        auth = f"Bearer {token}"
    return {"Authorization": auth, "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}


def send(client: FlaskClient, method: str, path: str, token: str) -> tuple[int, Any]:
    body = SCHEDULE if method in ("POST", "PUT") else None
    with client.open(path, method=method, json=body, headers=headers(path, token)) as response:
        return response.status_code, response.get_json(silent=True)


def without_audit(connection: Redis) -> dict[bytes, bytes | None]:
    return {k: v for k, v in snapshot(connection).items() if k != b"svc:audit"}


def test_every_route_is_in_the_scope_table_and_the_table_has_no_stale_entry(scoped_app: Flask) -> None:
    endpoints = {rule.endpoint for rule in scoped_app.url_map.iter_rules()}
    assert endpoints - set(ROUTES) == set(), "give these routes a scope in service/api/scopes.py"
    assert set(ROUTES) - endpoints == set(), "these table entries name no route"


def test_each_scope_reaches_exactly_the_routes_that_need_it(scoped_app: Flask, connection: Redis) -> None:
    client = scoped_app.test_client()
    assert client.put("/schedules/nightly", json=SCHEDULE, headers=headers("/", TOKEN)).status_code == 201
    checked = 0
    for rule in scoped_app.url_map.iter_rules():
        needed = ROUTES[rule.endpoint].scope
        path = url_of(rule.rule, EXAMPLES)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for scope in SCOPES:
                before = without_audit(connection)
                status, body = send(client, method, path, secret(scope))
                if status == 308:  # werkzeug sends e.g. /dashboard/0/view to /dashboard/, which is checked itself
                    continue
                allowed = (
                    needed is None or scope == needed or scope == "admin" or (scope, needed) == ("operate", "read")
                )
                if allowed:
                    assert status not in (401, 403), f"{scope} token: {method} {path} -> {status} {body}"
                else:
                    assert status == 403, f"{scope} token: {method} {path} -> {status} {body}"
                    assert body["error"]["code"] == "forbidden" and f"'{needed}'" in body["error"]["message"]
                    assert without_audit(connection) == before, f"a refused {method} {path} changed Redis"
                checked += 1
    assert checked >= 4 * len(ROUTES)


def test_a_bare_token_keeps_every_scope(client: FlaskClient) -> None:
    for method, path in [("GET", "/jobs/x"), ("POST", "/jobs/x/cancel"), ("GET", "/audit")]:
        assert send(client, method, path, TOKEN)[0] not in (401, 403)


def test_the_dashboard_shows_a_read_token_everything_and_lets_it_change_nothing(
    scoped_app: Flask, connection: Redis
) -> None:
    client = scoped_app.test_client()
    client.put("/schedules/nightly", json=SCHEDULE, headers=headers("/", TOKEN))
    job = client.post("/jobs", json={"task": "diag.fail"}, headers=headers("/", TOKEN)).get_json()
    reader = secret("read")
    for path in ("/dashboard/", "/dashboard/0/view/jobs", "/dashboard/schedules", f"/dashboard/0/view/job/{job['id']}"):
        assert send(client, "GET", path, reader)[0] == 200, path
    for path in (f"/dashboard/job/{job['id']}/delete", "/dashboard/queue/default/queued/empty"):
        status, body = send(client, "POST", path, reader)
        assert status == 403 and "'operate'" in body["error"]["message"]
    assert send(client, "POST", "/dashboard/schedules/nightly/pause", reader)[0] == 403
    assert connection.exists(f"rq:job:{job['id']}")
    assert client.get("/schedules/nightly", headers=headers("/", TOKEN)).get_json()["paused"] is False
    assert send(client, "POST", "/dashboard/schedules/nightly/pause", secret("operate"))[0] == 303
    assert client.get("/schedules/nightly", headers=headers("/", TOKEN)).get_json()["paused"] is True

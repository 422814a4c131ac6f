"""Every error status answers the one JSON error shape, and a rejected request writes nothing."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.dev.embedded_redis import free_port
from tests.conftest import AUTH, TOKEN
from tests.test_api_auth import assert_error

JSON = {**AUTH, "Content-Type": "application/json"}


def post(client: FlaskClient, body: str | bytes, headers: dict[str, str] = JSON):  # type: ignore[no-untyped-def]
    return client.post("/jobs", data=body, headers=headers)


@pytest.mark.parametrize(
    "body",
    [
        "{",
        "[1, 2",
        '{"task": "diag.echo"} trailing',
        '{"task": NaN}',
        '{"task": Infinity}',
        '{"task": "diag.echo", "task": "diag.fail"}',
        b'{"task": "\xff\xfe"}',
        "",
        "   ",
    ],
)
def test_malformed_json_is_400(client: FlaskClient, connection: Redis, body: str | bytes) -> None:
    assert_error(post(client, body), 400, "malformed_json")
    assert connection.dbsize() == 0


@pytest.mark.parametrize("body", ['["diag.echo"]', '"diag.echo"', "42", "null"])
def test_a_body_that_is_not_an_object_is_400(client: FlaskClient, body: str) -> None:
    assert_error(post(client, body), 400, "malformed_json")


def test_deep_nesting_is_refused_without_recursion_error(client: FlaskClient) -> None:
    body = '{"task": "diag.echo", "args": ' + "[" * 5000 + "]" * 5000 + "}"
    assert_error(post(client, body), 400, "malformed_json")


def test_unknown_path_is_404_json(client: FlaskClient) -> None:
    assert_error(client.get("/no/such/path", headers=AUTH), 404, "not_found")


def test_wrong_method_is_405_json(client: FlaskClient) -> None:
    response = client.delete("/jobs", headers=AUTH)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_body_over_the_limit_is_413(client: FlaskClient, connection: Redis) -> None:
    body = '{"task": "diag.echo", "args": ["' + "x" * (2 * 1024 * 1024) + '"]}'
    assert_error(post(client, body), 413, "payload_too_large")
    assert connection.dbsize() == 0


def test_form_body_is_415(client: FlaskClient) -> None:
    response = post(client, "task=diag.echo", headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"task": "os.system", "args": ["true"]}, "unknown_task", "task"),
        ({"task": "builtins.eval"}, "unknown_task", "task"),
        ({"task": "__import__"}, "unknown_task", "task"),
        ({"task": "service.tasks.diag.echo"}, "unknown_task", "task"),
        ({"task": "diag.echo", "queue": "urgent"}, "unknown_queue", "queue"),
        ({"task": "diag.echo", "queue": "High"}, "unknown_queue", "queue"),
        ({"task": "diag.echo", "queue": "default:intermediate"}, "unknown_queue", "queue"),
        ({"args": [1]}, "invalid_field", "task"),
        ({"task": 7}, "invalid_field", "task"),
        ({"task": "diag.echo", "args": {"a": 1}}, "invalid_field", "args"),
        ({"task": "diag.echo", "args": "1"}, "invalid_field", "args"),
        ({"task": "diag.echo", "kwargs": [1]}, "invalid_field", "kwargs"),
        ({"task": "diag.echo", "queue": 1}, "invalid_field", "queue"),
        ({"task": "diag.echo", "job_id": "x"}, "invalid_field", "job_id"),
    ],
)
def test_invalid_field_is_422_naming_it_and_enqueues_nothing(
    client: FlaskClient, connection: Redis, body: dict[str, object], code: str, field: str
) -> None:
    import json

    response = post(client, json.dumps(body))
    assert_error(response, 422, code)
    assert response.get_json()["error"]["message"].startswith(field)
    assert connection.dbsize() == 0


def test_redis_down_is_503_json_not_500(connection: Redis) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(Settings(redis_url=dead, api_tokens=(TOKEN,)), connection=connect(dead, role="web"))
    client = app.test_client()
    response = post(client, '{"task": "diag.echo"}')
    assert_error(response, 503, "redis_unavailable")
    assert response.headers["Retry-After"]
    assert_error(client.get("/jobs/abc", headers=AUTH), 503, "redis_unavailable")
    assert_error(client.get("/readyz"), 503, "redis_unavailable")

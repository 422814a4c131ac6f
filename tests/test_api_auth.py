"""Bearer-token auth on every API path but the probes."""

from __future__ import annotations

import hmac
from unittest import mock

import pytest
from flask.testing import FlaskClient

from tests.conftest import AUTH, TOKEN


def assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN} "},
        {"Authorization": "Bearer t\u00e9st-token-0123456789"},
    ],
)
def test_request_without_the_right_token_is_401(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.get("/jobs/some-id", headers=headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_in_the_query_string_is_not_accepted(client: FlaskClient) -> None:
    assert_error(client.get(f"/jobs/x?token={TOKEN}"), 401, "unauthorized")


def test_right_token_is_let_through(client: FlaskClient) -> None:
    assert_error(client.get("/jobs/no-such-job", headers=AUTH), 404, "job_not_found")


def test_any_of_several_tokens_is_accepted(app, client: FlaskClient) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    app.extensions["settings"] = replace(app.extensions["settings"], api_tokens=("x" * 20, TOKEN))
    assert client.get("/jobs/no-such-job", headers=AUTH).status_code == 404


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_need_no_token(client: FlaskClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_tokens_are_compared_in_constant_time(client: FlaskClient) -> None:
    with mock.patch("service.api.auth.hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        client.get("/jobs/x", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert compare.called

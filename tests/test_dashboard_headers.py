"""Security headers on every response and the dashboard's CSP."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.test_dashboard import GOOD, SAME_ORIGIN


def directives(policy: str) -> dict[str, str]:
    return {name: value.strip() for name, _, value in (d.strip().partition(" ") for d in policy.split(";"))}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/dashboard/", GOOD, 200),
        ("GET", "/dashboard/schedules", GOOD, 200),
        ("GET", "/dashboard/0/data/workers.json", GOOD, 200),
        ("GET", "/dashboard/static/css/main.css", GOOD, 200),
        ("GET", "/dashboard/", {}, 401),
        ("POST", "/dashboard/requeue/default", GOOD, 403),
        ("GET", "/dashboard/requeue/default", SAME_ORIGIN, 405),
        ("GET", "/dashboard/0/view/job/no-such-job", GOOD, 404),
        ("GET", "/healthz", {}, 200),
        ("GET", "/jobs", AUTH, 200),
        ("GET", "/jobs", {}, 401),
        ("GET", "/no-such-path", AUTH, 404),
    ],
)
def test_every_response_forbids_framing_and_sniffing(
    client: FlaskClient, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    with client.open(path, method=method, headers=headers) as response:
        assert response.status_code == status
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert directives(response.headers["Content-Security-Policy"])["frame-ancestors"] == "'none'"


def test_api_responses_may_load_nothing(client: FlaskClient) -> None:
    policy = directives(client.get("/jobs", headers=AUTH).headers["Content-Security-Policy"])
    assert policy == {"default-src": "'none'", "frame-ancestors": "'none'"}


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/0/view/workers", "/dashboard/schedules"])
def test_dashboard_pages_run_only_their_own_scripts(client: FlaskClient, path: str) -> None:
    nonces = []
    for _ in range(2):
        response = client.get(path, headers=GOOD)
        policy = directives(response.headers["Content-Security-Policy"])
        assert policy["default-src"] == "'none'" and policy["base-uri"] == "'none'"
        assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-inline'" not in policy["style-src"]
        (nonce,) = re.findall(r"'nonce-([A-Za-z0-9_-]{16,})'", policy["script-src"])
        inline = re.findall(r"<script[^>]*>", response.get_data(as_text=True))
        assert [tag for tag in inline if "src=" not in tag and "text/template" not in tag] == [
            f'<script type="text/javascript" nonce="{nonce}">'
        ]
        nonces.append(nonce)
    assert nonces[0] != nonces[1]

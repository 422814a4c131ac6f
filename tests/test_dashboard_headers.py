"""Security headers on every response, the dashboard's CSP, and forwarded headers believed only from trusted proxies."""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request

import pytest
from flask.testing import FlaskClient

from service.core.config import Settings
from service.core.errors import ConfigError
from service.dev.embedded_redis import free_port
from tests.conftest import AUTH, TOKEN
from tests.processes import Processes
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


@pytest.mark.parametrize(
    ("value", "hops"), [(None, 0), ("0", 0), ("1", 1), (" 2 ", 2), ("5", 5), ("6", None), ("-1", None), ("²", None)]
)
def test_trusted_proxy_hops_setting(redis_url: str, value: str | None, hops: int | None) -> None:
    env = {"REDIS_URL": redis_url, "API_TOKENS": TOKEN}
    if value is not None:
        env["TRUSTED_PROXY_HOPS"] = value
    if hops is None:
        with pytest.raises(ConfigError, match="^TRUSTED_PROXY_HOPS: must be a whole number between 0 and 5$"):
            Settings.from_env(env)
    else:
        assert Settings.from_env(env).trusted_proxy_hops == hops


def call(url: str, method: str, headers: dict[str, str]) -> tuple[int, str]:
    basic = "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    request = urllib.request.Request(url, method=method, headers={"Authorization": basic, **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.slow
@pytest.mark.parametrize("hops", [0, 1])
def test_forwarded_headers_count_only_from_trusted_proxies(processes: Processes, hops: int) -> None:
    port = free_port()
    processes.web(port, env={"TRUSTED_PROXY_HOPS": str(hops)})
    direct = f"http://127.0.0.1:{port}"
    empty = f"{direct}/dashboard/queue/default/queued/empty"
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "queue.example", "X-Forwarded-Prefix": "/ops"}

    # Origin as the client of the TLS-terminating proxy sees it: accepted only when the proxy is trusted.
    assert call(empty, "POST", {**proxied, "Origin": "https://queue.example"})[0] == (200 if hops else 403)
    # X-Forwarded-Proto alone (gunicorn would believe it from a local peer): only a trusted proxy's counts.
    assert call(empty, "POST", {"X-Forwarded-Proto": "https", "Origin": f"https://127.0.0.1:{port}"})[0] == (
        200 if hops else 403
    )
    assert call(empty, "POST", {**proxied, "Origin": direct})[0] == (403 if hops else 200)

    status, page = call(f"{direct}/dashboard/", "GET", proxied)
    assert status == 200
    assert ('href="/ops/dashboard/static/css/main.css"' in page) == bool(hops)
    assert ('href="/dashboard/static/css/main.css"' in page) == (not hops)

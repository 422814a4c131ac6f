"""rq-dashboard at /dashboard/: Basic auth on every path, no cross-site state changes, the schedules view."""

from __future__ import annotations

import base64

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.jobs.model import ServiceQueue
from tests.api import Api
from tests.conftest import TASK_MODULES, TOKEN
from tests.processes import Processes


def basic(password: str, user: str = "ops") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD = basic(TOKEN)
SAME_ORIGIN = {**GOOD, "Origin": "http://localhost"}
PATHS = [
    ("GET", "/dashboard"),
    ("GET", "/dashboard/"),
    ("GET", "/dashboard/0/view/queues"),
    ("GET", "/dashboard/0/view/workers"),
    ("GET", "/dashboard/0/view/jobs"),
    ("GET", "/dashboard/0/data/queues.json"),
    ("GET", "/dashboard/0/data/workers.json"),
    ("GET", "/dashboard/0/data/job/abc.json"),
    ("GET", "/dashboard/static/css/bootstrap.min.css"),
    ("GET", "/dashboard/static/js/jquery-3.5.1.min.js"),
    ("GET", "/dashboard/static/no-such-file.css"),
    ("GET", "/dashboard/requeue/default"),
    ("POST", "/dashboard/requeue/default"),
    ("POST", "/dashboard/job/abc/delete"),
    ("POST", "/dashboard/job/abc/requeue"),
    ("POST", "/dashboard/queue/default/failed/empty"),
    ("POST", "/dashboard/queue/default/compact"),
    ("GET", "/dashboard/schedules"),
    ("GET", "/dashboard/charts"),
    ("GET", "/dashboard/charts/data.json"),
    ("GET", "/dashboard/charts/static/charts.js"),
    ("POST", "/dashboard/schedules/s1/pause"),
]


@pytest.mark.parametrize(("method", "path"), PATHS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("wrong-token-0123456789"),
        basic(""),
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": "Basic !!"},
    ],
)
def test_every_dashboard_path_is_401_without_a_token(
    client: FlaskClient, method: str, path: str, headers: dict[str, str]
) -> None:
    with client.open(path, method=method, headers=headers) as response:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert response.get_json()["error"]["code"] == "unauthorized"


def test_dashboard_pages_and_static_files_load_with_a_token(client: FlaskClient) -> None:
    assert client.get("/dashboard/", headers=GOOD).status_code == 200
    with client.get("/dashboard/static/css/bootstrap.min.css", headers=GOOD) as css:
        assert css.status_code == 200 and b"bootstrap" in css.get_data()


def test_dashboard_shows_json_jobs_in_each_lane(client: FlaskClient) -> None:
    api = Api(client)
    for lane in ("high", "default", "low"):
        api.enqueue(task="diag.echo", queue=lane)
    queues = client.get("/dashboard/0/data/queues.json", headers=GOOD).get_json()["queues"]
    assert {q["name"]: q["count"] for q in queues} == {"high": 1, "default": 1, "low": 1}
    job = api.enqueue(task="diag.echo", args=[5])
    detail = client.get(f"/dashboard/0/data/job/{job['id']}.json", headers=GOOD).get_json()
    assert detail["id"] == job["id"]


# Every /dashboard route with the methods it answers; the state-changing ones are POST only (docs/dashboard.md).
ROUTES = {
    "/dashboard/": {"GET"},
    "/dashboard/<int:instance_number>/": {"GET"},
    "/dashboard/<int:instance_number>/view": {"GET"},
    "/dashboard/<int:instance_number>/view/queues": {"GET"},
    "/dashboard/<int:instance_number>/view/workers": {"GET"},
    "/dashboard/<int:instance_number>/view/jobs": {"GET"},
    "/dashboard/<int:instance_number>/view/jobs/<queue_name>/<registry_name>/<int:per_page>/<order>/<int:page>": {
        "GET"
    },
    "/dashboard/<int:instance_number>/view/job/<job_id>": {"GET"},
    "/dashboard/<int:instance_number>/data/queues.json": {"GET"},
    "/dashboard/<int:instance_number>/data/jobs/<queue_name>/<registry_name>/<per_page>/<order>/<page>.json": {"GET"},
    "/dashboard/<int:instance_number>/data/job/<job_id>.json": {"GET"},
    "/dashboard/<int:instance_number>/data/workers.json": {"GET"},
    "/dashboard/static/<path:filename>": {"GET"},
    "/dashboard/favicon.ico": {"GET"},
    "/dashboard/schedules": {"GET"},
    "/dashboard/schedules/<schedule_id>/<action>": {"POST"},
    "/dashboard/charts": {"GET"},
    "/dashboard/charts/data.json": {"GET"},
    "/dashboard/charts/static/<path:filename>": {"GET"},
    "/dashboard/job/<job_id>/delete": {"POST"},
    "/dashboard/job/<job_id>/requeue": {"POST"},
    "/dashboard/requeue/<queue_name>": {"POST"},
    "/dashboard/queue/<queue_name>/<registry_name>/empty": {"POST"},
    "/dashboard/queue/<queue_name>/compact": {"POST"},
}
STATE_CHANGES = [
    "/dashboard/schedules/nightly/pause",
    "/dashboard/job/abc/delete",
    "/dashboard/job/abc/requeue",
    "/dashboard/requeue/default",
    "/dashboard/queue/default/queued/empty",
    "/dashboard/queue/default/compact",
]


def test_every_dashboard_route_is_known_and_changes_state_only_by_post(app: Flask, client: FlaskClient) -> None:
    rules = {rule.rule: rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/dashboard")}
    assert set(rules) == set(ROUTES)
    for path, methods in ROUTES.items():
        assert methods <= (rules[path].methods or set())
    for path in STATE_CHANGES:  # a GET (or HEAD) of a state change is refused, whatever the route table allows
        for method in ("GET", "HEAD"):
            response = client.open(path, method=method, headers=SAME_ORIGIN)
            allowed = {m.strip() for m in response.headers["Allow"].split(",")}
            assert response.status_code == 405 and "POST" in allowed and "GET" not in allowed, (method, path)
        assert client.options(path, headers=GOOD).status_code == 200  # what a preflight asks; nothing runs


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "null"},
        {"Origin": "http://localhost.evil.example"},
        {"Origin": "https://localhost"},
        {"Origin": "http://localhost:8080"},
        {"Origin": "https://evil.example", "Referer": "http://localhost/dashboard/"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "cross-site"},
        {},  # neither Origin nor Referer: a no-cors request from another site may carry neither
    ],
)
@pytest.mark.parametrize("path", STATE_CHANGES)
def test_a_state_change_without_same_origin_proof_is_refused(
    client: FlaskClient, connection: Redis, headers: dict[str, str], path: str
) -> None:
    job = Api(client).enqueue(task="diag.echo")
    response = client.post(path, headers={**GOOD, **headers})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert ServiceQueue("default", connection=connection).get_job_ids() == [job["id"]]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://localhost"},
        {"Origin": "http://LOCALHOST:80"},
        {"Referer": "http://localhost/dashboard/0/view/jobs"},
        {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    ],
)
def test_a_same_origin_state_change_is_allowed(client: FlaskClient, connection: Redis, headers: dict[str, str]) -> None:
    Api(client).enqueue(task="diag.echo")
    response = client.post("/dashboard/queue/default/queued/empty", headers={**GOOD, **headers})
    assert response.status_code == 200
    assert ServiceQueue("default", connection=connection).count == 0


@pytest.mark.slow
def test_a_get_of_requeue_all_requeues_nothing(client: FlaskClient, processes: Processes) -> None:
    api = Api(client)
    failed = api.enqueue(task="diag.fail")
    assert processes.worker("--burst").wait(30) == 0
    assert api.job(failed["id"])["status"] == "failed"
    assert client.get("/dashboard/requeue/default", headers=SAME_ORIGIN).status_code == 405
    assert api.job(failed["id"])["status"] == "failed"
    response = client.post("/dashboard/requeue/default", headers=SAME_ORIGIN)
    assert response.status_code == 200 and response.get_json()["count"] == 1
    assert api.job(failed["id"])["status"] == "queued"


def test_cross_site_read_is_allowed(client: FlaskClient) -> None:
    assert client.get("/dashboard/", headers={**GOOD, "Referer": "https://elsewhere.example/"}).status_code == 200


def test_schedules_view_lists_schedules_and_pauses_one(client: FlaskClient) -> None:
    api = Api(client)
    put = client.put(
        "/schedules/nightly-report",
        json={"task": "reports.generate", "args": ["r1"], "cron": "0 3 * * *", "timezone": "Europe/Vienna"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert put.status_code in (200, 201), put.get_json()
    page = client.get("/dashboard/schedules", headers=GOOD)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "nightly-report" in html and "cron 0 3 * * *" in html and "Europe/Vienna" in html
    assert "+01:00" in html or "+02:00" in html  # the next run shown in the schedule's zone
    response = client.post("/dashboard/schedules/nightly-report/pause", headers={**GOOD, "Origin": "http://localhost"})
    assert response.status_code == 303
    assert api.get("/schedules/nightly-report")[1]["paused"] is True
    assert "paused" in client.get("/dashboard/schedules", headers=GOOD).get_data(as_text=True)


def test_dashboard_links_to_the_schedules_view(client: FlaskClient) -> None:
    assert "/dashboard/schedules" in client.get("/dashboard/", headers=GOOD).get_data(as_text=True)


def test_all_three_lanes_are_listed_before_any_job(client: FlaskClient) -> None:
    queues = client.get("/dashboard/0/data/queues.json", headers=GOOD).get_json()["queues"]
    assert [(q["name"], q["count"], q["failed_job_registry_count"]) for q in queues] == [
        ("high", 0, 0),
        ("default", 0, 0),
        ("low", 0, 0),
    ]
    jobs_page = client.get("/dashboard/0/view/jobs", headers=GOOD).get_data(as_text=True)
    assert all(f'<option value="{lane}">' in jobs_page for lane in ("high", "default", "low"))


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/1/view/queues",
        "/dashboard/0/view/jobs/reports/queued/8/asc/1",
        "/dashboard/0/data/jobs/default/nowhere/8/asc/1.json",
        "/dashboard/0/data/jobs/default/queued/0/asc/1.json",
        "/dashboard/0/data/jobs/default/queued/8/up/1.json",
        "/dashboard/0/data/jobs/default/queued/eight/asc/1.json",
        "/dashboard/0/data/job/no-such-job.json",
        "/dashboard/0/view/job/no-such-job",
        "/dashboard/0/view/job/bad%0A",
    ],
)
def test_a_path_naming_nothing_the_service_creates_is_404(client: FlaskClient, path: str) -> None:
    response = client.get(path, headers=GOOD)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] in ("not_found", "job_not_found")


def test_navbar_names_redis_without_its_password_or_tls_files(redis_url: str, connection: Redis) -> None:
    secret_url = (
        "rediss://ops:s3cret-pass@redis.internal:6380/2"
        "?ssl_keyfile=%2Fsecrets%2Fclient.key&ssl_certfile=%2Fsecrets%2Fclient.crt&ssl_ca_certs=%2Fsecrets%2Fca.crt"
    )
    settings = Settings(redis_url=secret_url, api_tokens=(TOKEN,), task_modules=TASK_MODULES)
    client = create_app(settings, connection=connect(redis_url, role="web")).test_client()
    job = Api(client).enqueue(task="diag.echo")
    for path in (
        "/dashboard/",
        "/dashboard/0/view/jobs",
        "/dashboard/0/view/workers",
        f"/dashboard/0/view/job/{job['id']}",
        "/dashboard/schedules",
    ):
        page = client.get(path, headers=GOOD).get_data(as_text=True)
        assert "[0] rediss://redis.internal:6380/2</option>" in page, path  # the navbar's instance picker
        assert not any(secret in page for secret in ("s3cret", "secrets", "ssl_", "ops:")), path

"""rq-dashboard at /dashboard/: Basic auth on every path, no cross-site state changes, the schedules view."""

from __future__ import annotations

import base64

import pytest
from flask.testing import FlaskClient

from tests.api import Api
from tests.conftest import TOKEN


def basic(password: str, user: str = "ops") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD = basic(TOKEN)
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


@pytest.mark.parametrize(
    "headers",
    [{"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"}, {"Origin": "null"}],
)
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/dashboard/requeue/default"), ("GET", "/dashboard/requeue/default")]
)
def test_cross_site_state_change_is_refused(
    client: FlaskClient, headers: dict[str, str], method: str, path: str
) -> None:
    response = client.open(path, method=method, headers={**GOOD, **headers})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"


def test_same_site_state_change_is_allowed(client: FlaskClient) -> None:
    response = client.post("/dashboard/requeue/default", headers={**GOOD, "Origin": "http://localhost"})
    assert response.status_code == 200


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

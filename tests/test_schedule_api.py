"""Schedules over HTTP: upsert by id, echo, errors that name the field, pause/resume, run now, preview, backfill."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis

from service.core.keys import ScheduleKeys
from tests.conftest import AUTH

pytestmark = pytest.mark.matrix

EVERY_MINUTE = {"task": "diag.echo", "args": [1], "kwargs": {"k": "v"}, "cron": "* * * * *"}


def call(client: FlaskClient, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
    headers = dict(AUTH) if auth else {}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    response = client.open(path, method=method, data=data, headers=headers)
    return response.status_code, response.get_json(silent=True)


def put(client: FlaskClient, schedule_id: str, body: dict[str, Any]) -> tuple[int, Any]:
    return call(client, "PUT", f"/schedules/{schedule_id}", body)


def test_put_creates_201_then_replaces_200_and_echoes_the_fields(client: FlaskClient) -> None:
    status, created = put(client, "report-1", {**EVERY_MINUTE, "timezone": "Europe/Vienna", "description": "d"})
    assert status == 201
    assert created["id"] == "report-1"
    assert created["task"] == "diag.echo" and created["args"] == [1] and created["kwargs"] == {"k": "v"}
    assert created["cron"] == "* * * * *" and created["timezone"] == "Europe/Vienna" and created["description"] == "d"
    assert created["queue"] == "default" and created["overlap"] == "skip" and created["coalesce"] is True
    assert created["paused"] is False and created["last_run_at"] is None and created["last_job_id"] is None
    next_run = datetime.fromisoformat(created["next_run_at"].replace("Z", "+00:00"))
    assert timedelta(0) < next_run - datetime.now(UTC) <= timedelta(seconds=61)
    assert created["counters"] == {"runs": 0, "missed": 0, "skipped": 0, "dropped": 0, "coalesced": 0}

    status, replaced = put(client, "report-1", {**EVERY_MINUTE, "interval": None, "cron": "0 3 * * *"})
    assert status == 200
    assert replaced["cron"] == "0 3 * * *" and replaced["timezone"] == "UTC"
    assert call(client, "GET", "/schedules/report-1") == (200, replaced)


def test_upsert_by_the_same_id_never_duplicates(client: FlaskClient, connection: Redis) -> None:
    for _ in range(3):
        put(client, "same", EVERY_MINUTE)
    put(client, "same", {**EVERY_MINUTE, "args": [2]})
    status, page = call(client, "GET", "/schedules")
    assert status == 200
    assert [s["id"] for s in page["schedules"]] == ["same"]
    assert page["schedules"][0]["args"] == [2]
    assert connection.zcard(ScheduleKeys.due) == 1


def test_identical_put_changes_nothing(client: FlaskClient) -> None:
    _, first = put(client, "steady", {"task": "diag.echo", "interval": 3600})
    status, second = put(client, "steady", {"task": "diag.echo", "interval": 3600})
    assert status == 200
    assert second == first


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"task": "diag.echo"}, "cron, interval or at"),
        ({"task": "diag.echo", "cron": "* * * * *", "at": "2030-01-01T00:00:00Z"}, "cron, interval or at"),
        ({"task": "nope.missing", "interval": 5}, "task"),
        ({"task": "diag.echo", "interval": 5, "queue": "urgent"}, "queue"),
        ({"task": "diag.echo", "cron": "* * *"}, "cron"),
        ({"task": "diag.echo", "cron": "* * * * *", "timezone": "Nowhere/City"}, "timezone"),
        ({"task": "diag.echo", "interval": 0}, "interval"),
        ({"task": "diag.echo", "interval": "5"}, "interval"),
        ({"task": "diag.echo", "at": "tomorrow"}, "at"),
        ({"task": "diag.echo", "interval": 5, "repeat": 0}, "repeat"),
        ({"task": "diag.echo", "interval": 5, "jitter": -1}, "jitter"),
        ({"task": "diag.echo", "interval": 5, "coalesce": "yes"}, "coalesce"),
        ({"task": "diag.echo", "interval": 5, "dst_fold": "last"}, "dst_fold"),
        ({"task": "diag.echo", "interval": 5, "unknown": 1}, "unknown"),
        ({"task": "diag.echo", "interval": 5, "id": "other"}, "id"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field_and_write_nothing(
    client: FlaskClient, connection: Redis, body: dict, field: str
) -> None:
    status, error = put(client, "bad", body)
    assert status == 422
    assert error["error"]["code"] in ("invalid_field", "unknown_task", "unknown_queue")
    assert field in error["error"]["message"]
    assert connection.keys("svc:*") == []


@pytest.mark.parametrize("schedule_id", ["has space", "x" * 101, "semi;colon", "dots.not.allowed", "abc%0A"])
def test_a_bad_schedule_id_is_404_stating_the_rule(client: FlaskClient, connection: Redis, schedule_id: str) -> None:
    status, error = put(client, schedule_id, EVERY_MINUTE)
    assert status == 404
    assert error["error"]["message"].startswith("schedule_id:") and "1-100" in error["error"]["message"]
    assert connection.keys("svc:*") == []


def test_unknown_schedule_is_404_on_every_route(client: FlaskClient) -> None:
    for method, path in [
        ("GET", "/schedules/ghost"),
        ("DELETE", "/schedules/ghost"),
        ("POST", "/schedules/ghost/pause"),
        ("POST", "/schedules/ghost/resume"),
        ("POST", "/schedules/ghost/run"),
        ("GET", "/schedules/ghost/runs"),
        ("GET", "/schedules/ghost/preview"),
    ]:
        status, error = call(client, method, path)
        assert status == 404, (method, path)
        assert error["error"]["code"] == "schedule_not_found"


def test_schedules_need_a_token(client: FlaskClient) -> None:
    for method, path in [("GET", "/schedules"), ("PUT", "/schedules/a"), ("POST", "/schedules/preview")]:
        status, error = call(client, method, path, EVERY_MINUTE, auth=False)
        assert status == 401
        assert error["error"]["code"] == "unauthorized"


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.put("/schedules/a", data="{nope", headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400


def test_pause_with_note_and_resume(client: FlaskClient, connection: Redis) -> None:
    put(client, "p", EVERY_MINUTE)
    status, paused = call(client, "POST", "/schedules/p/pause", {"note": "maintenance"})
    assert status == 200
    assert paused["paused"] is True and paused["note"] == "maintenance" and paused["next_run_at"] is None
    assert connection.zscore(ScheduleKeys.due, "p") is None
    # Re-putting the same definition (a redeploy) keeps it paused.
    assert put(client, "p", EVERY_MINUTE)[1]["paused"] is True
    status, resumed = call(client, "POST", "/schedules/p/resume")
    assert status == 200
    assert resumed["paused"] is False and resumed["note"] is None and resumed["next_run_at"] is not None
    assert connection.zscore(ScheduleKeys.due, "p") is not None


def test_run_now_enqueues_a_run_job_with_its_logical_time(client: FlaskClient, connection: Redis) -> None:
    put(client, "now", {**EVERY_MINUTE, "paused": True})
    status, job = call(client, "POST", "/schedules/now/run")
    assert status == 202
    assert job["status"] == "queued" and job["task"] == "diag.echo" and job["args"] == [1]
    assert job["schedule_id"] == "now"
    epoch = int(datetime.fromisoformat(job["scheduled_for"].replace("Z", "+00:00")).timestamp())
    assert job["id"] == f"now-{epoch}"
    assert connection.lrange("rq:queue:default", 0, -1) == [job["id"].encode()]
    _, runs = call(client, "GET", "/schedules/now/runs")
    assert runs["runs"][0]["job_id"] == job["id"] and runs["runs"][0]["status"] == "queued"
    assert call(client, "GET", "/schedules/now")[1]["last_job_id"] == job["id"]


def test_delete_removes_the_schedule(client: FlaskClient, connection: Redis) -> None:
    put(client, "gone", EVERY_MINUTE)
    status, _ = call(client, "DELETE", "/schedules/gone")
    assert status == 204
    assert call(client, "GET", "/schedules/gone")[0] == 404
    assert connection.zcard(ScheduleKeys.due) == 0 and connection.zcard(ScheduleKeys.index) == 0


def test_list_pages_with_a_cursor(client: FlaskClient) -> None:
    for n in range(7):
        put(client, f"s{n}", EVERY_MINUTE)
    seen, cursor = [], None
    while True:
        status, page = call(client, "GET", "/schedules?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200
        seen += [s["id"] for s in page["schedules"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"s{n}" for n in range(7)]
    assert call(client, "GET", "/schedules?limit=0")[0] == 422


def test_preview_saved_and_unsaved(client: FlaskClient) -> None:
    body = {"task": "diag.echo", "cron": "0 9 * * *", "timezone": "America/New_York"}
    put(client, "ny", body)
    status, saved = call(client, "GET", "/schedules/ny/preview?count=3")
    assert status == 200 and len(saved["times"]) == 3
    assert all(t["local"].startswith(t["local"][:10]) and "T09:00:00" in t["local"] for t in saved["times"])
    status, unsaved = call(client, "POST", "/schedules/preview?count=3", body)
    assert status == 200 and unsaved["times"] == saved["times"]
    assert call(client, "GET", "/schedules/ny/preview?count=0")[0] == 422
    status, error = call(client, "POST", "/schedules/preview", {"task": "diag.echo", "cron": "bad"})
    assert status == 422 and "cron" in error["error"]["message"]


def test_backfill_enqueues_one_run_per_past_due_time_once(client: FlaskClient, connection: Redis) -> None:
    put(client, "hourly", {"task": "diag.echo", "cron": "0 * * * *"})
    window = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T03:00:00Z"}
    status, result = call(client, "POST", "/schedules/hourly/backfill", window)
    assert status == 202
    assert [r["scheduled_for"] for r in result["runs"]] == [f"2026-01-01T0{h}:00:00Z" for h in range(4)]
    assert result["created"] == 4
    job = call(client, "GET", f"/jobs/{result['runs'][1]['job_id']}")[1]
    assert job["scheduled_for"] == "2026-01-01T01:00:00Z" and job["id"] == "hourly-1767229200"
    again = call(client, "POST", "/schedules/hourly/backfill", window)[1]
    assert again["created"] == 0
    assert connection.llen("rq:queue:default") == 4


@pytest.mark.parametrize(
    ("window", "field"),
    [
        ({"from": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2999-01-01T00:00:00Z"}, "to"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "yesterday", "to": "2026-01-01T00:00:00Z"}, "from"),
    ],
)
def test_backfill_rejects_bad_or_unbounded_ranges(
    client: FlaskClient, connection: Redis, window: dict, field: str
) -> None:
    put(client, "hourly", {"task": "diag.echo", "cron": "0 * * * *"})
    status, error = call(client, "POST", "/schedules/hourly/backfill", window)
    assert status == 422
    assert error["error"]["message"].startswith(field)
    assert connection.llen("rq:queue:default") == 0

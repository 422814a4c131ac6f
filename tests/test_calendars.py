"""Calendars: dates schedules skip, judged in each schedule's zone; stored once however many schedules name them."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.cli.main import cli
from service.core.clock import server_now
from service.core.errors import CalendarInUse, CalendarNotFound, ConfigError, InvalidField
from service.core.keys import CalendarKeys
from service.schedules import calendars
from service.schedules import operations as schedules
from service.schedules.declared import sync
from service.schedules.scheduler import ServiceScheduler
from tests.conftest import AUTH, TOKEN
from tests.helpers import snapshot, wait_until
from tests.processes import Processes

pytestmark = pytest.mark.matrix  # a fault or scheduler test: make test runs it on every server

T0 = datetime(2030, 1, 1, tzinfo=UTC)
# 00:30 in Auckland (UTC+13 in January) is 11:30 UTC the day before: the local date is what counts.
AUCKLAND_NIGHTLY = {"task": "diag.echo", "cron": "30 0 * * *", "timezone": "Pacific/Auckland"}


def call(client: FlaskClient, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = client.open(path, method=method, json=body, headers=AUTH)
    return response.status_code, response.get_json(silent=True)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def history(connection: Redis, schedule_id: str) -> list[tuple[str, str, str | None]]:
    """(scheduled_for, status, reason) of the recorded runs, oldest first."""
    runs = reversed(schedules.runs(connection, schedule_id)["runs"])
    return [(r["scheduled_for"], r["status"], r.get("reason")) for r in runs]


def test_calendars_are_put_read_listed_and_deleted_over_http(client: FlaskClient) -> None:
    body = {"dates": ["2026-12-26", "2026-12-25", "2026-12-25"], "description": "Christmas"}
    status, created = call(client, "PUT", "/calendars/xmas", body)
    assert status == 201
    assert created["dates"] == ["2026-12-25", "2026-12-26"] and created["description"] == "Christmas"
    assert created["used_by"] == 0 and created["origin"] == "api" and created["id"] == "xmas"
    assert call(client, "PUT", "/calendars/xmas", body) == (200, created)  # the same body changes nothing
    assert call(client, "GET", "/calendars/xmas") == (200, created)
    for n in range(3):
        call(client, "PUT", f"/calendars/c{n}", {"dates": []})
    status, page = call(client, "GET", "/calendars?limit=2")
    assert status == 200 and [c["id"] for c in page["calendars"]] == ["c0", "c1"] and page["next_cursor"] == "c1"
    status, rest = call(client, "GET", "/calendars?limit=2&cursor=c1")
    assert [c["id"] for c in rest["calendars"]] == ["c2", "xmas"] and rest["next_cursor"] is None
    assert call(client, "DELETE", "/calendars/xmas")[0] == 204
    status, missing = call(client, "GET", "/calendars/xmas")
    assert status == 404 and missing["error"]["code"] == "calendar_not_found"
    assert call(client, "DELETE", "/calendars/xmas")[0] == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dates": ["2026-02-30"]}, "dates"),
        ({"dates": ["26-12-25"]}, "dates"),
        ({"dates": ["2026-12-25T00:00:00"]}, "dates"),
        ({"dates": [f"2026-01-{d:02d}" for d in range(1, 32)] * 323}, "dates"),  # 10,013 dates
        ({"dates": "2026-12-25"}, "dates"),
        ({"dates": [], "colour": "red"}, "colour"),
        ({"description": "no dates"}, "dates"),
    ],
)
def test_a_bad_calendar_is_422_naming_the_field_and_writes_nothing(
    client: FlaskClient, connection: Redis, body: dict[str, Any], field: str
) -> None:
    before = snapshot(connection)
    status, error = call(client, "PUT", "/calendars/bad", body)
    assert status == 422 and error["error"]["message"].startswith(field), error
    assert snapshot(connection) == before


def test_ten_thousand_dates_are_accepted(client: FlaskClient) -> None:
    dates = [(T0 + timedelta(days=n)).date().isoformat() for n in range(10_000)]
    status, created = call(client, "PUT", "/calendars/long", {"dates": dates})
    assert status == 201 and len(created["dates"]) == 10_000


def test_a_schedule_naming_an_unknown_calendar_is_422_and_writes_nothing(
    client: FlaskClient, connection: Redis
) -> None:
    before = snapshot(connection)
    status, error = call(client, "PUT", "/schedules/s", {**AUCKLAND_NIGHTLY, "skip_calendars": ["nope"]})
    assert (
        status == 422 and error["error"]["message"].startswith("skip_calendars") and "nope" in error["error"]["message"]
    )
    status, error = call(client, "POST", "/schedules/preview", {**AUCKLAND_NIGHTLY, "skip_calendars": ["nope"]})
    assert status == 422
    assert snapshot(connection) == before


def test_a_calendar_in_use_cannot_be_deleted_until_no_schedule_names_it(client: FlaskClient) -> None:
    call(client, "PUT", "/calendars/holidays", {"dates": ["2030-01-02"]})
    call(client, "PUT", "/schedules/a", {**AUCKLAND_NIGHTLY, "skip_calendars": ["holidays"]})
    call(client, "PUT", "/schedules/b", {**AUCKLAND_NIGHTLY, "skip_calendars": ["holidays"]})
    assert call(client, "GET", "/calendars/holidays")[1]["used_by"] == 2
    status, error = call(client, "DELETE", "/calendars/holidays")
    assert status == 409 and error["error"]["code"] == "calendar_in_use" and "2 schedule" in error["error"]["message"]
    call(client, "PUT", "/schedules/a", AUCKLAND_NIGHTLY)  # no longer names it
    call(client, "DELETE", "/schedules/b")
    assert call(client, "GET", "/calendars/holidays")[1]["used_by"] == 0
    assert call(client, "DELETE", "/calendars/holidays")[0] == 204


def test_a_due_time_on_a_listed_local_date_is_skipped_recorded_and_counted(connection: Redis) -> None:
    calendars.put(connection, "holidays", {"dates": ["2030-01-02"]}, now=T0)
    for schedule_id, extra in {
        "auckland": {"skip_calendars": ["holidays"]},
        "own-date": {"skip_dates": ["2030-01-02"]},
        "utc": {"skip_calendars": ["holidays"], "timezone": "UTC"},  # 00:30 UTC on Jan 2 is skipped too
        "free": {},
    }.items():
        schedules.upsert(connection, schedule_id, {**AUCKLAND_NIGHTLY, "overlap": "allow", **extra}, now=T0)
    clock = Clock(T0)
    scheduler = ServiceScheduler(connection, clock=clock)
    assert scheduler.acquire_lock()
    # Auckland 00:30 on Jan 2 (local, a holiday) = 11:30 UTC Jan 1; 00:30 on Jan 3 = 11:30 UTC Jan 2.
    assert schedules.get(connection, "auckland")["next_run_at"] == "2030-01-02T11:30:00Z"  # the 2nd is skipped
    clock.now = T0 + timedelta(hours=11, minutes=31)
    assert scheduler.enqueue_jobs() == 2  # "free", and "utc" at 00:30 UTC on Jan 1
    assert history(connection, "auckland") == [("2030-01-01T11:30:00Z", "skipped", "calendar")]
    assert history(connection, "own-date") == [("2030-01-01T11:30:00Z", "skipped", "calendar")]
    assert history(connection, "free") == [("2030-01-01T11:30:00Z", "queued", None)]
    clock.now = T0 + timedelta(days=1, hours=11, minutes=31)
    assert scheduler.enqueue_jobs() == 3  # auckland, own-date, free; not utc, whose 00:30 on Jan 2 is a holiday
    auckland = schedules.get(connection, "auckland")
    assert auckland["counters"]["skipped"] == 1 and auckland["counters"]["runs"] == 1
    assert [s for _, s, _ in history(connection, "auckland")] == ["skipped", "queued"]
    assert history(connection, "utc") == [
        ("2030-01-01T00:30:00Z", "queued", None),
        ("2030-01-02T00:30:00Z", "skipped", "calendar"),
    ]
    stats = {k.decode(): int(v) for k, v in connection.hgetall("svc:schedules:stats").items()}
    assert stats["skipped"] == 3 and stats["runs"] == 5


def test_previews_backfills_and_next_run_leave_skipped_dates_out(client: FlaskClient, connection: Redis) -> None:
    now = server_now(connection)
    tomorrow = (now + timedelta(days=1)).date()
    body = {"task": "diag.echo", "cron": "0 12 * * *", "skip_calendars": ["days"]}
    calendars.put(connection, "days", {"dates": [tomorrow.isoformat(), (tomorrow + timedelta(days=2)).isoformat()]})
    call(client, "PUT", "/schedules/noon", body)
    status, preview = call(client, "GET", "/schedules/noon/preview?count=4")
    days = [t["utc"][:10] for t in preview["times"]]
    assert status == 200 and tomorrow.isoformat() not in days and len(days) == 4
    assert (tomorrow + timedelta(days=2)).isoformat() not in days
    assert call(client, "POST", "/schedules/preview?count=4", body)[1]["times"] == preview["times"]
    assert call(client, "GET", "/schedules/noon")[1]["next_run_at"][:10] != tomorrow.isoformat()

    past = now.date() - timedelta(days=5)
    calendars.put(connection, "days", {"dates": [past.isoformat()]})
    window = {"from": f"{past - timedelta(days=1)}T00:00:00Z", "to": f"{past + timedelta(days=1)}T23:59:59Z"}
    status, done = call(client, "POST", "/schedules/noon/backfill", window)
    assert status == 202 and [r["scheduled_for"][:10] for r in done["runs"]] == [
        (past - timedelta(days=1)).isoformat(),
        (past + timedelta(days=1)).isoformat(),
    ]


@pytest.mark.slow
def test_fifty_thousand_schedules_share_one_calendar_without_copying_it(connection: Redis) -> None:
    dates = [(T0 + timedelta(days=n)).date().isoformat() for n in range(10_000)]  # ~130 kB of dates
    calendars.put(connection, "holidays", {"dates": dates}, now=T0)
    plain = {"task": "diag.echo", "args": [1], "interval": 86400}
    count = 50_000

    def grow(body: dict[str, Any], prefix: str, size: int) -> float:
        before = connection.info("memory")["used_memory"]
        schedules.upsert_many(connection, {f"{prefix}-{n:05d}": body for n in range(size)}, now=T0)
        return (connection.info("memory")["used_memory"] - before) / size

    without = grow(plain, "plain", count // 5)
    sharing = grow({**plain, "skip_calendars": ["holidays"]}, "user", count)
    assert sharing - without < 200, (sharing, without)  # a copy of the dates would be ~130,000 bytes each
    assert calendars.get(connection, "holidays")["used_by"] == count
    assert len(connection.keys(CalendarKeys.prefix + "*")) == 1

    clock = Clock(T0 + timedelta(days=1, seconds=1))  # 2030-01-02 (a listed date) for every one of them
    scheduler = ServiceScheduler(connection, clock=clock)
    assert scheduler.acquire_lock()
    assert scheduler.enqueue_jobs() == count // 5  # the plain ones ran; every sharing one skipped
    assert schedules.get(connection, "user-49999")["counters"] == {
        "runs": 0,
        "missed": 0,
        "skipped": 1,
        "dropped": 0,
        "coalesced": 0,
    }


def test_declared_file_holds_calendars_synced_before_the_schedules_that_name_them(
    connection: Redis, tmp_path: Path
) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(
        '[calendars.holidays]\ndates = [2030-01-02, "2030-12-25"]\ndescription = "days off"\n'
        '[schedules.nightly]\ntask = "diag.echo"\ncron = "30 0 * * *"\nskip_calendars = ["holidays"]\n'
    )
    changed = sync(connection, path)
    assert "calendar holidays" in changed["created"] and "nightly" in changed["created"]
    held = calendars.get(connection, "holidays")
    assert held["dates"] == ["2030-01-02", "2030-12-25"] and held["origin"] == "file" and held["used_by"] == 1
    before = snapshot(connection)
    sync(connection, path)  # unchanged: nothing written
    assert snapshot(connection) == before

    path.write_text('[schedules.nightly]\ntask = "diag.echo"\ncron = "30 0 * * *"\nskip_calendars = ["holidays"]\n')
    sync(connection, path)  # no longer declared, but still named: it stays
    assert calendars.get(connection, "holidays")["used_by"] == 1
    path.write_text('[schedules.nightly]\ntask = "diag.echo"\ncron = "30 0 * * *"\n')
    assert "calendar holidays" in sync(connection, path)["removed"]
    with pytest.raises(CalendarNotFound):
        calendars.get(connection, "holidays")

    path.write_text('[schedules.broken]\ntask = "diag.echo"\ncron = "30 0 * * *"\nskip_calendars = ["gone"]\n')
    with pytest.raises(ConfigError) as caught:
        sync(connection, path)
    assert "broken" in caught.value.message and "gone" in caught.value.message
    assert not connection.exists("svc:schedule:broken")


def test_the_cli_puts_lists_gets_and_removes_calendars_and_audits_changes(
    process_env: dict[str, str], connection: Redis, tmp_path: Path
) -> None:
    dates = tmp_path / "dates.txt"
    dates.write_text("2030-01-02  # a holiday\n\n2030-01-03\n")
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(cli, list(args), env=process_env)
        return result.exit_code, result.stdout, result.stderr

    code, out, _ = run("calendars", "put", "days", "--date", "2030-01-01", "--dates-file", str(dates))
    assert code == 0 and json.loads(out)["dates"] == ["2030-01-01", "2030-01-02", "2030-01-03"]
    code, out, _ = run("schedules", "add", "s", "--task", "diag.echo", "--cron", "0 3 * * *", "--skip-calendar", "days")
    assert code == 0 and json.loads(out)["skip_calendars"] == ["days"]
    assert "days" in run("calendars", "list")[1] and json.loads(run("calendars", "get", "days")[1])["used_by"] == 1
    code, _, err = run("calendars", "rm", "days")
    assert code == 1 and "skipped by 1 schedule" in err
    run("schedules", "rm", "s")
    assert run("calendars", "rm", "days")[0] == 0
    assert run("calendars", "get", "days")[0] == 1
    code, _, err = run("calendars", "put", "bad", "--date", "2030-13-01")
    assert code == 2 and "dates" in err
    actions = [e["action"] for e in json.loads(run("audit", "--json", "--limit", "10")[1])["events"]]
    assert actions[:2] == ["calendar.delete", "schedule.delete"] and "calendar.put" in actions


def test_calendar_writes_are_audited_and_need_the_operate_scope(client: FlaskClient) -> None:
    assert call(client, "PUT", "/calendars/days", {"dates": []})[0] == 201
    assert call(client, "DELETE", "/calendars/days")[0] == 204
    events = call(client, "GET", "/audit?limit=2")[1]["events"]
    assert [(e["action"], e["target"]) for e in events] == [("calendar.delete", "days"), ("calendar.put", "days")]


def test_the_dashboard_shows_a_schedules_calendars(client: FlaskClient) -> None:
    call(client, "PUT", "/calendars/holidays-at", {"dates": ["2030-01-02"]})
    call(
        client,
        "PUT",
        "/schedules/n",
        {**AUCKLAND_NIGHTLY, "skip_calendars": ["holidays-at"], "skip_dates": ["2030-05-01"]},
    )
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}
    page = client.get("/dashboard/schedules", headers=basic).get_data(as_text=True)
    assert 'class="badge badge-info calendar">holidays-at<' in page and "1 date(s)" in page


def test_the_openapi_document_describes_calendars(client: FlaskClient) -> None:
    document = client.get("/openapi.json", headers=AUTH).get_json()
    assert {"get", "put", "delete"} <= set(document["paths"]["/calendars/{calendar_id}"])
    assert "get" in document["paths"]["/calendars"]
    schemas = json.dumps(document["components"]["schemas"])
    assert "used_by" in schemas and "skip_calendars" in schemas


@pytest.mark.slow
def test_a_running_scheduler_skips_todays_runs_until_the_calendar_drops_today(
    connection: Redis, processes: Processes
) -> None:
    today = server_now(connection).date().isoformat()  # a schedule in UTC: today's local date is UTC's
    calendars.put(connection, "today", {"dates": [today]})
    every = {"task": "diag.echo", "interval": 1, "overlap": "allow", "coalesce": False}
    schedules.upsert(connection, "off", {**every, "skip_calendars": ["today"]})
    schedules.upsert(connection, "on", every)
    processes.scheduler()
    wait_until(lambda: schedules.get(connection, "off")["counters"]["skipped"] >= 3, timeout=30)
    assert schedules.get(connection, "off")["counters"]["runs"] == 0
    assert schedules.get(connection, "on")["counters"]["runs"] >= 2
    assert {(s, r) for _, s, r in history(connection, "off")} == {("skipped", "calendar")}
    calendars.put(connection, "today", {"dates": []})  # the scheduler sees the new digest on its next pass
    wait_until(lambda: schedules.get(connection, "off")["counters"]["runs"] >= 2, timeout=30)
    with pytest.raises(CalendarInUse):
        calendars.delete(connection, "today")
    with pytest.raises(InvalidField):
        schedules.upsert(connection, "x", {**every, "skip_calendars": ["not-there"]})

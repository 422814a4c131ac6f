"""Records planted in Redis for this round's features (progress, batches, schedules' calls, calendars).

Whoever can write to Redis may leave anything in these keys. The API never
answers 500 for it: an unreadable record is a 404 (a batch, a calendar) or a
409 `schedule_damaged` that says how to recover; lists leave it out; the
scheduler leaves it alone and goes on firing the others.
"""

from __future__ import annotations

import json
import zlib

import pytest
from flask.testing import FlaskClient
from redis import Redis
from redis.exceptions import ResponseError

from service.core import keys
from service.core.keys import CalendarKeys, ScheduleKeys
from service.schedules import operations as schedules
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import Processes

pytestmark = pytest.mark.matrix  # a fault or scheduler test: make test runs it on every server

DEEP = b"[" * 100_000 + b"]" * 100_000
BATCH = "0f0c0a0e-1111-4222-8333-444455556666"


@pytest.mark.parametrize("planted", [DEEP, b"\xff\xfe", b"{", b"NaN]"])
def test_a_jobs_planted_progress_reads_as_null(client: FlaskClient, connection: Redis, planted: bytes) -> None:
    job_id = client.post("/jobs", json={"task": "diag.echo"}, headers=AUTH).get_json()["id"]
    connection.hset(keys.JOB_PREFIX + job_id, "progress", planted)
    answer = client.get(f"/jobs/{job_id}", headers=AUTH)
    assert answer.status_code == 200 and answer.get_json()["progress"] is None
    assert client.get("/jobs?status=queued", headers=AUTH).status_code == 200


def strict_json(raw: bytes) -> object:
    """Parse as a JSON client does: `NaN` and `Infinity` are not JSON."""
    return json.loads(raw, parse_constant=lambda name: pytest.fail(f"the answer holds {name}: {raw[:200]!r}"))


def test_numbers_json_cannot_carry_planted_in_a_job_come_back_as_null(client: FlaskClient, connection: Redis) -> None:
    job_id = client.post("/jobs", json={"task": "diag.echo", "args": [1]}, headers=AUTH).get_json()["id"]
    call = b'["diag.echo", null, [NaN, 1.5, Infinity], {"x": -Infinity}]'
    connection.hset(keys.JOB_PREFIX + job_id, "data", zlib.compress(call))
    answer = client.get(f"/jobs/{job_id}", headers=AUTH)
    assert answer.status_code == 200
    job = strict_json(answer.data)
    assert job["args"] == [None, 1.5, None] and job["kwargs"] == {"x": None}  # type: ignore[index]
    listed = strict_json(client.get("/jobs?status=queued", headers=AUTH).data)
    assert [j["args"] for j in listed["jobs"]] == [[None, 1.5, None]]  # type: ignore[index]


@pytest.mark.parametrize(
    "fields",
    [{"total": "abc"}, {"total": "1", "finished": "x"}, {"total": "1e5"}, {"total": "-1"}, {"finished": "1"}],
)
def test_a_planted_batch_is_not_found(client: FlaskClient, connection: Redis, fields: dict[str, str]) -> None:
    connection.hset(keys.batch_key(BATCH), mapping=fields)
    answer = client.get(f"/batches/{BATCH}", headers=AUTH)
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "batch_not_found"


def test_a_batch_key_of_another_type_is_not_found(client: FlaskClient, connection: Redis) -> None:
    connection.set(keys.batch_key(BATCH), "x")
    assert client.get(f"/batches/{BATCH}", headers=AUTH).status_code == 404


CALLS = ["[1,2,3,4]", "not json", "[[], {}, 5]", '"x"', "[]", "[" * 5000, "\udcff"]
# Times the API shows (created, updated, next due, buffered run, the state's last run) that are none.
TIMES = [("c", "x"), ("u", "9" * 20), ("b", "-" + "9" * 16), ("s", "9" * 20 + ",1")]


@pytest.mark.parametrize(("field", "value"), [*(("a", call) for call in CALLS), *TIMES])
def test_a_schedule_with_a_planted_call_or_time_is_damaged_until_put_again_or_deleted(
    client: FlaskClient, connection: Redis, field: str, value: str
) -> None:
    body = {"task": "diag.echo", "interval": 60}
    for schedule_id in ("bad", "good"):
        assert client.put(f"/schedules/{schedule_id}", json=body, headers=AUTH).status_code == 201
    connection.hset(ScheduleKeys.schedule("bad"), field, value.encode(errors="surrogateescape"))
    for method, path in [("GET", "/schedules/bad"), ("GET", "/schedules/bad/runs"), ("POST", "/schedules/bad/run"),
                         ("POST", "/schedules/bad/pause"), ("GET", "/schedules/bad/preview")]:  # fmt: skip
        answer = client.open(path, method=method, headers=AUTH)
        assert answer.status_code == 409, (method, path, answer.get_json())
        assert answer.get_json()["error"]["code"] == "schedule_damaged"
    listed = client.get("/schedules", headers=AUTH).get_json()["schedules"]
    assert [s["id"] for s in listed] == ["good"]
    assert client.put("/schedules/bad", json={**body, "interval": 30}, headers=AUTH).status_code == 201
    assert client.get("/schedules/bad", headers=AUTH).get_json()["interval"] == 30  # written from a clean hash
    connection.hset(ScheduleKeys.schedule("bad"), "s", "garbage")
    assert client.delete("/schedules/bad", headers=AUTH).status_code == 204
    assert not connection.exists(ScheduleKeys.schedule("bad"))


@pytest.mark.parametrize(
    "key",
    [ScheduleKeys.index, ScheduleKeys.due, ScheduleKeys.templates, ScheduleKeys.template_refs, CalendarKeys.refs],
)
def test_a_shared_schedule_key_of_another_type_refuses_a_put_or_delete_and_writes_nothing(
    client: FlaskClient, connection: Redis, key: str
) -> None:
    assert client.put("/calendars/hols", json={"dates": ["2030-01-01"]}, headers=AUTH).status_code == 201
    body = {"task": "diag.echo", "interval": 60, "skip_calendars": ["hols"]}
    assert client.put("/schedules/old", json=body, headers=AUTH).status_code == 201
    planted = connection.dump(key)
    connection.delete(key)
    connection.set(key, "planted")
    answer = client.put("/schedules/new", json=body, headers=AUTH)
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "redis_unavailable"
    assert not connection.exists(ScheduleKeys.schedule("new"))
    answer = client.delete("/schedules/old", headers=AUTH)
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "redis_unavailable"
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        schedules.upsert_many(connection, {"bulk": body})
    assert not connection.exists(ScheduleKeys.schedule("bulk"))
    connection.delete(key)
    connection.restore(key, 0, planted)
    assert client.get("/schedules/new", headers=AUTH).status_code == 404
    assert client.get("/schedules/old", headers=AUTH).status_code == 200
    assert client.get("/calendars/hols", headers=AUTH).get_json()["used_by"] == 1
    assert client.delete("/schedules/old", headers=AUTH).status_code == 204
    assert client.get("/calendars/hols", headers=AUTH).get_json()["used_by"] == 0


def test_a_planted_calendar_is_not_found_and_left_out_of_the_list(client: FlaskClient, connection: Redis) -> None:
    for calendar_id in ("bad", "good"):
        assert client.put(f"/calendars/{calendar_id}", json={"dates": ["2030-01-01"]}, headers=AUTH).status_code == 201
    for planted in (b"\xff[", b"[1, 2]", b'{"a": 1}', DEEP):
        connection.hset(CalendarKeys.calendar("bad"), "dates", planted)
        assert client.get("/calendars/bad", headers=AUTH).status_code == 404
        listed = client.get("/calendars", headers=AUTH).get_json()["calendars"]
        assert [c["id"] for c in listed] == ["good"]
    assert client.delete("/calendars/bad", headers=AUTH).status_code == 204


@pytest.mark.slow
def test_the_scheduler_leaves_a_damaged_schedule_and_a_damaged_calendar_alone_and_fires_the_others(
    client: FlaskClient, connection: Redis, processes: Processes
) -> None:
    every = {"task": "diag.echo", "interval": 1, "overlap": "allow"}
    assert client.put("/calendars/days", json={"dates": ["2030-01-01"]}, headers=AUTH).status_code == 201
    for schedule_id in ("bad", "good", "cal"):
        extra = {"skip_calendars": ["days"]} if schedule_id == "cal" else {}
        assert client.put(f"/schedules/{schedule_id}", json={**every, **extra}, headers=AUTH).status_code == 201
    connection.hset(ScheduleKeys.schedule("bad"), "a", "[" * 5000)
    connection.hset(CalendarKeys.calendar("days"), mapping={"dates": "\xff", "digest": "planted"})
    scheduler = processes.scheduler()
    runs = lambda schedule_id: client.get(f"/schedules/{schedule_id}", headers=AUTH).get_json()["counters"]["runs"]  # noqa: E731
    wait_until(lambda: runs("good") >= 3 and runs("cal") >= 3, timeout=30, what="the readable schedules to fire")
    assert connection.zscore(ScheduleKeys.due, "bad") is None  # left alone: out of the due set until written again
    assert scheduler.alive() and "'bad' cannot be read" in scheduler.output()


@pytest.mark.parametrize("which", ["queue_key", "started_key", "groups_key"])
def test_a_lane_key_of_another_type_leaves_the_monitoring_of_every_lane_answering(
    client: FlaskClient, connection: Redis, which: str
) -> None:
    """One planted key used to make GET /queues and GET /metrics a 503 for every lane; it reads as empty."""
    assert client.post("/jobs", json={"task": "diag.echo", "queue": "low"}, headers=AUTH).status_code == 202
    connection.set(getattr(keys, which)("high"), "planted")
    queues = client.get("/queues", headers=AUTH)
    assert queues.status_code == 200, queues.get_data(as_text=True)
    rows = {row["name"]: row for row in queues.get_json()["queues"]}
    assert rows["low"]["queued"] == 1 and rows["high"]["queued"] == 0
    metrics = client.get("/metrics", headers=AUTH)
    assert metrics.status_code == 200
    assert 'queue_depth{queue="low"} 1' in metrics.get_data(as_text=True)


def test_a_damaged_enqueued_at_on_a_lanes_oldest_job_leaves_metrics_answering(
    client: FlaskClient, connection: Redis
) -> None:
    job_id = client.post("/jobs", json={"task": "diag.echo", "queue": "low"}, headers=AUTH).get_json()["id"]
    connection.hset(keys.JOB_PREFIX + job_id, "enqueued_at", "not a time")
    assert client.get("/metrics", headers=AUTH).status_code == 200

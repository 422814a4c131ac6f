"""The schedule scripts on a real Redis: fire (fenced by the lease owner, compare-and-set on the due score),
read_due and pause_schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ResponseError

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core import keys
from service.core.keys import ScheduleKeys
from service.jobs.callbacks import pause_schedule
from service.schedules import operations as schedules
from service.schedules.runs import Entry, Firing, fire_manual, plan_due
from service.schedules.spec import to_ms
from service.schedules.store import StoredSchedule, read, read_due
from service.tasks.registry import REGISTRY, RetryPolicy, task
from tests.helpers import wait_until

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = "lease-under-test"

if "scripts.exponential" not in REGISTRY:

    @task("scripts.exponential", retry=RetryPolicy(max=3, backoff="exponential"))
    def exponential() -> None:
        """Retried with exponential backoff."""


def due_entry(connection: Redis, schedule_id: str, now: datetime) -> tuple[Entry, dict[str, StoredSchedule]]:
    """The plan for firing `schedule_id` at `now`, as the scheduler makes it."""
    stored = read(connection, schedule_id)
    assert stored is not None
    score = int(connection.zscore(ScheduleKeys.due, schedule_id) or 0)
    return plan_due(stored, score, now), {schedule_id: stored}


def queued(connection: Redis) -> list[str]:
    return [i.decode() for i in connection.lrange(keys.queue_key("default"), 0, -1)]


@pytest.fixture
def every_ten(connection: Redis) -> datetime:
    """Schedule `tick` (every 10 s from T0) and return when its first run is due."""
    schedules.upsert(connection, "tick", {"task": "diag.echo", "interval": 10}, now=T0)
    return T0 + timedelta(seconds=10)


def test_firing_needs_the_lease_to_hold_the_owner_token(connection: Redis, every_ten: datetime) -> None:
    entry, stored = due_entry(connection, "tick", every_ten)
    connection.set(LEASE, "someone-else")
    assert Firing(connection, owner="me", lease_key=LEASE).run([entry], stored, every_ten) is None
    assert queued(connection) == [] and connection.zscore(ScheduleKeys.due, "tick") == to_ms(every_ten)
    connection.set(LEASE, "me")
    assert Firing(connection, owner="me", lease_key=LEASE).run([entry], stored, every_ten) == [[1, 0, 0]]
    assert queued(connection) == ["tick-1893456010"]
    assert connection.zscore(ScheduleKeys.due, "tick") == to_ms(every_ten + timedelta(seconds=10))


def test_a_due_score_changed_since_planning_wins_over_the_plan(connection: Redis, every_ten: datetime) -> None:
    entry, stored = due_entry(connection, "tick", every_ten)
    schedules.upsert(connection, "tick", {"task": "diag.echo", "interval": 30}, now=T0)  # moves the due time
    assert Firing(connection).run([entry], stored, every_ten) == [-2]
    assert queued(connection) == []
    assert connection.zscore(ScheduleKeys.due, "tick") == to_ms(T0 + timedelta(seconds=30))


def test_a_schedule_twice_in_one_call_fires_once(connection: Redis, every_ten: datetime) -> None:
    entry, stored = due_entry(connection, "tick", every_ten)
    assert Firing(connection).run([entry, entry], stored, every_ten) == [[1, 0, 0], -2]  # the second is stale
    assert queued(connection) == ["tick-1893456010"]
    assert connection.zscore(ScheduleKeys.due, "tick") == to_ms(every_ten + timedelta(seconds=10))


def test_a_firing_leaves_no_job_template_behind_even_when_it_fails(connection: Redis, every_ten: datetime) -> None:
    entry, stored = due_entry(connection, "tick", every_ten)
    assert Firing(connection).run([entry], stored, every_ten) == [[1, 0, 0]]
    assert list(connection.scan_iter(ScheduleKeys.fire_scratch + "*")) == []
    later = every_ten + timedelta(seconds=10)
    entry, stored = due_entry(connection, "tick", later)
    connection.delete(keys.queue_key("default"), keys.job_key("tick-1893456010"))  # the first run is over
    connection.set(keys.queue_key("default"), "planted")  # the lane push fails after the run's job is written
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        Firing(connection).run([entry], stored, later)
    assert list(connection.scan_iter(ScheduleKeys.fire_scratch + "*")) == []
    assert connection.exists(keys.job_key("tick-1893456020"))


def test_a_schedule_paused_since_planning_does_not_fire_and_leaves_the_due_set(
    connection: Redis, every_ten: datetime
) -> None:
    entry, stored = due_entry(connection, "tick", every_ten)
    connection.hset(ScheduleKeys.schedule("tick"), "p", "1")  # as pause_schedule does
    assert Firing(connection).run([entry], stored, every_ten) == [-2]
    assert queued(connection) == [] and connection.zscore(ScheduleKeys.due, "tick") is None


def test_a_manual_firing_creates_each_run_once(connection: Redis, every_ten: datetime) -> None:
    stored = read(connection, "tick")
    assert stored is not None
    first = fire_manual(connection, stored, [to_ms(T0)], "manual", T0)
    again = fire_manual(connection, stored, [to_ms(T0), to_ms(every_ten)], "backfill", every_ten)
    assert [r["created"] for r in first + again] == [True, False, True]
    assert queued(connection) == ["tick-1893456000", "tick-1893456010"]


def test_each_run_draws_its_own_exponential_retry_intervals(connection: Redis) -> None:
    schedules.upsert(connection, "flaky", {"task": "scripts.exponential", "interval": 10}, now=T0)
    stored = read(connection, "flaky")
    assert stored is not None
    dues = [to_ms(T0 + timedelta(seconds=10 * n)) for n in range(20)]
    runs = fire_manual(connection, stored, dues, "backfill", T0 + timedelta(seconds=200))
    drawn = [json.loads(connection.hget(keys.job_key(r["job_id"]), "retry_intervals")) for r in runs]
    for intervals in drawn:
        assert [7.5 <= intervals[0] <= 12.5, 15 <= intervals[1] <= 25, 30 <= intervals[2] <= 50] == [True] * 3
    assert len({tuple(i) for i in drawn}) > 1  # not one draw copied into every run


def test_read_due_returns_the_due_schedules_earliest_first_with_what_firing_needs(connection: Redis) -> None:
    for schedule_id, interval in (("b", 10), ("a", 20), ("later", 3600)):
        schedules.upsert(connection, schedule_id, {"task": "diag.echo", "interval": interval}, now=T0)
    connection.zadd(ScheduleKeys.due, {"stray": to_ms(T0)})  # a member without a schedule hash
    found: list[tuple[str, int, Any]] = read_due(connection, to_ms(T0 + timedelta(seconds=20)), 10)
    assert [(schedule_id, score) for schedule_id, score, _ in found] == [
        ("stray", to_ms(T0)),
        ("b", to_ms(T0 + timedelta(seconds=10))),
        ("a", to_ms(T0 + timedelta(seconds=20))),
    ]
    assert found[0][2] is None and found[1][2].spec.interval == 10
    assert found[1][2].next_due == to_ms(T0 + timedelta(seconds=10)) and found[1][2].buffered_due is None
    first_two = read_due(connection, to_ms(T0 + timedelta(days=1)), 2)
    assert [schedule_id for schedule_id, _, _ in first_two] == ["stray", "b"]


def test_read_due_after_a_cursor_reads_past_it_until_it_fires(connection: Redis) -> None:
    for schedule_id in ("a", "b", "c"):
        schedules.upsert(connection, schedule_id, {"task": "diag.echo", "interval": 10}, now=T0)
    due = to_ms(T0 + timedelta(seconds=10))
    latest = to_ms(T0 + timedelta(seconds=20))
    assert [i for i, _, _ in read_due(connection, latest, 10, after=("a", due))] == ["b", "c"]
    assert [i for i, _, _ in read_due(connection, latest, 1, after=("a", due))] == ["b"]
    connection.zadd(ScheduleKeys.due, {"a": due + 60_000})  # the cursor fired: its batch is gone from the head
    assert [i for i, _, _ in read_due(connection, latest, 10, after=("a", due))] == ["b", "c"]
    assert read_due(connection, latest, 10, after=("c", due)) == []


def test_pause_schedule_pauses_with_a_note_and_wakes_the_scheduler(connection: Redis, every_ten: datetime) -> None:
    wakeups = connection.pubsub(ignore_subscribe_messages=True)
    wakeups.subscribe(ScheduleKeys.wakeup)
    assert pause_schedule(connection, "tick", "disk full") is True
    paused = schedules.get(connection, "tick")
    assert (paused["paused"], paused["note"], paused["next_run_at"]) == (True, "disk full", None)
    assert connection.zscore(ScheduleKeys.due, "tick") is None
    message = wait_until(lambda: wakeups.get_message(timeout=0.1), what="the wake-up")
    assert message["data"] == b"tick"
    assert pause_schedule(connection, "nope", "") is False
    assert not connection.exists(ScheduleKeys.schedule("nope"))


def test_a_template_is_stored_once_and_deleted_with_its_last_schedule(connection: Redis) -> None:
    body = {"task": "diag.echo", "interval": 60}
    schedules.upsert_many(connection, {"a": {**body, "args": [1]}, "b": {**body, "args": [2]}})
    schedules.upsert(connection, "c", {**body, "interval": 30})
    assert connection.hlen(ScheduleKeys.templates) == 2  # a and b share theirs
    schedules.delete(connection, "a")
    schedules.upsert(connection, "c", body)  # moves to a and b's template; its own goes
    assert connection.hlen(ScheduleKeys.templates) == 1
    assert schedules.get(connection, "b")["args"] == [2] and schedules.get(connection, "c")["interval"] == 60
    schedules.delete(connection, "b")
    schedules.delete(connection, "c")
    assert not connection.exists(ScheduleKeys.templates, ScheduleKeys.template_refs)

"""Writing a schedule (read_schedule.lua, put_schedule.lua): while something else changes Redis between its
read and its write, the wake-ups it sends, and over a planted key of another type.

A PUT reads the schedule, decides, then writes in one script that first checks the schedule is still as
read, that the calendars it names exist and, for a new id, the MAX_SCHEDULES cap. The `meanwhile` tests
make the other change land in that gap (right after the read) and check what a user would see.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis
from redis.connection import AbstractConnection

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core import clock
from service.core.clock import server_now
from service.core.errors import InvalidField, ScheduleLimitReached
from service.core.keys import CalendarKeys, ScheduleKeys
from service.schedules import calendars
from service.schedules import operations as schedules
from service.schedules.spec import parse_spec
from tests.conftest import AUTH
from tests.helpers import snapshot, wait_until

BODY = {"task": "diag.echo", "interval": 60}
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def meanwhile(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], Any]], list[int]]]:
    """`meanwhile(change)`: the next schedule write runs `change` once, right after it read the schedule;
    returns a list that gets one item per schedule read from then on (the change's own included).

    The gap exists on the two-round-trip path only (the one-round-trip write reads and writes in one
    script): writes take that path here, as they do whenever the one-trip plan does not fit."""
    monkeypatch.setattr(schedules, "_guessed_write", lambda *args: (None, None))
    original = schedules._read_for_write
    reads: list[int] = []
    pending: list[Callable[[], Any]] = []

    def read_then_change(*args: Any) -> Any:
        found = original(*args)
        reads.append(1)
        if pending:
            pending.pop()()
        return found

    def arm(change: Callable[[], Any]) -> list[int]:
        pending.append(change)
        reads.clear()
        return reads

    monkeypatch.setattr(schedules, "_read_for_write", read_then_change)
    yield arm


def test_a_schedule_replaced_meanwhile_is_read_again_and_its_template_released(
    connection: Redis, meanwhile: Callable[[Callable[[], Any]], list[int]]
) -> None:
    schedules.upsert(connection, "s", BODY)
    reads = meanwhile(lambda: schedules.upsert(connection, "s", {**BODY, "interval": 30}, origin="file"))
    answer, created = schedules.upsert(connection, "s", {**BODY, "interval": 90, "args": [1]})
    assert not created and len(reads) == 3  # ours, the other writer's, ours again
    assert answer["interval"] == 90 and answer["args"] == [1] and answer["origin"] == "api"
    assert schedules.get(connection, "s") == answer
    # Only the template in use is left: the one of 60 s went with the first replace, 30 s with ours.
    assert connection.hlen(ScheduleKeys.templates) == 1
    assert connection.hgetall(ScheduleKeys.template_refs) == {connection.hget(ScheduleKeys.schedule("s"), "t"): b"1"}


def test_a_pause_meanwhile_is_kept_by_a_replace_that_does_not_name_paused(
    connection: Redis, meanwhile: Callable[[Callable[[], Any]], list[int]]
) -> None:
    schedules.upsert(connection, "s", BODY)
    meanwhile(lambda: schedules.pause(connection, "s", "maintenance"))
    answer, _ = schedules.upsert(connection, "s", {**BODY, "interval": 30})
    assert answer["paused"] and answer["next_run_at"] is None and answer["interval"] == 30
    assert connection.zscore(ScheduleKeys.due, "s") is None


def test_a_calendar_deleted_meanwhile_refuses_the_write_and_changes_nothing(
    connection: Redis, meanwhile: Callable[[Callable[[], Any]], list[int]]
) -> None:
    calendars.put(connection, "holidays", {"dates": ["2030-01-01"]})
    schedules.upsert(connection, "s", BODY)
    before: dict[bytes, bytes | None] = {}

    def delete_calendar() -> None:
        calendars.delete(connection, "holidays")
        before.update(snapshot(connection))

    meanwhile(delete_calendar)
    with pytest.raises(InvalidField) as refused:
        schedules.upsert(connection, "s", {**BODY, "skip_calendars": ["holidays"]})
    assert refused.value.field == "skip_calendars" and "'holidays' is not a calendar" in refused.value.message
    assert snapshot(connection) == before
    assert not connection.hexists(CalendarKeys.refs, "holidays")


def test_the_cap_counts_a_schedule_created_meanwhile(
    connection: Redis, meanwhile: Callable[[Callable[[], Any]], list[int]]
) -> None:
    schedules.upsert(connection, "a", BODY)
    before: dict[bytes, bytes | None] = {}

    def create_another() -> None:
        schedules.upsert(connection, "b", BODY)
        before.update(snapshot(connection))

    meanwhile(create_another)
    with pytest.raises(ScheduleLimitReached):
        schedules.save(connection, "c", parse_spec(BODY), max_schedules=2)
    assert snapshot(connection) == before
    assert connection.zrange(ScheduleKeys.index, 0, -1) == [b"a", b"b"]


def test_a_put_wakes_the_scheduler_only_when_it_is_due_before_every_other_schedule(connection: Redis) -> None:
    schedules.upsert(connection, "hourly", {"task": "diag.echo", "interval": 3600}, now=T0)
    wakeups = connection.pubsub(ignore_subscribe_messages=True)
    wakeups.subscribe(ScheduleKeys.wakeup)
    schedules.upsert(connection, "daily", {"task": "diag.echo", "interval": 86400}, now=T0)  # due after hourly
    schedules.upsert(connection, "paused", {**BODY, "paused": True}, now=T0)  # not due at all
    schedules.upsert(connection, "minutely", BODY, now=T0)  # due first: the scheduler must not sleep past it
    # Messages arrive in order: the first one is minutely's, so neither write before it published one.
    message = wait_until(lambda: wakeups.get_message(timeout=0.1), what="the wake-up")
    assert message["data"] == b"minutely"
    wakeups.close()


def test_a_schedule_key_of_another_type_is_damaged_until_put_again_or_deleted(
    client: FlaskClient, connection: Redis
) -> None:
    for schedule_id in ("put", "deleted"):
        connection.set(ScheduleKeys.schedule(schedule_id), "planted")
        connection.zadd(ScheduleKeys.index, {schedule_id: 0})
        answer = client.get(f"/schedules/{schedule_id}", headers=AUTH)
        assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "schedule_damaged"
    assert client.put("/schedules/put", json=BODY, headers=AUTH).status_code == 201  # as its message says
    assert client.get("/schedules/put", headers=AUTH).get_json()["interval"] == 60
    assert client.delete("/schedules/deleted", headers=AUTH).status_code == 204
    assert not connection.exists(ScheduleKeys.schedule("deleted"))
    assert [s["id"] for s in client.get("/schedules", headers=AUTH).get_json()["schedules"]] == ["put"]


def test_a_bulk_write_over_a_schedule_replaced_meanwhile_reads_the_chunk_again_and_counts_templates_right(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    schedules.upsert_many(connection, {"a": BODY, "b": BODY})
    original, reads = schedules.read_with_values, []

    def read_then_change(*args: Any) -> Any:
        found = original(*args)
        reads.append(1)
        if len(reads) == 1:  # between the chunk's read and its write, "b" moves to a template of its own
            schedules.upsert(connection, "b", {**BODY, "interval": 30})
        return found

    monkeypatch.setattr(schedules, "read_with_values", read_then_change)
    counts = schedules.upsert_many(connection, {"a": {**BODY, "interval": 90}, "b": {**BODY, "interval": 90}})
    assert counts == {"created": 0, "updated": 2, "unchanged": 0} and len(reads) == 2
    assert [schedules.get(connection, i)["interval"] for i in ("a", "b")] == [90, 90]
    # One template left, used by both: the 60 s one went with a's write, the 30 s one with b's.
    template = connection.hget(ScheduleKeys.schedule("a"), "t")
    assert connection.hkeys(ScheduleKeys.templates) == [template]
    assert connection.hgetall(ScheduleKeys.template_refs) == {template: b"2"}


def test_a_bulk_write_naming_a_calendar_deleted_meanwhile_writes_none_of_its_chunk(
    connection: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    calendars.put(connection, "holidays", {"dates": ["2030-01-01"]})
    schedules.upsert_many(connection, {"a": BODY})
    before: dict[bytes, bytes | None] = {}
    original = schedules.read_with_values

    def read_then_delete(*args: Any) -> Any:
        found = original(*args)
        calendars.delete(connection, "holidays")
        before.update(snapshot(connection))
        return found

    monkeypatch.setattr(schedules, "read_with_values", read_then_delete)
    items = {"a": {**BODY, "interval": 30}, "b": {**BODY, "skip_calendars": ["holidays"]}}
    with pytest.raises(InvalidField) as refused:
        schedules.upsert_many(connection, items)
    assert refused.value.field == "skip_calendars" and "'holidays' is not a calendar" in refused.value.message
    assert snapshot(connection) == before  # not even a's change, which named no calendar


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every request redis-py sends from now on (a pipeline is one)."""
    sent = [0]
    original = AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return sent


def assert_due_within(connection: Redis, interval: int) -> None:
    """Schedule s is next due within `interval` seconds of Redis's clock (an interval's due times are aligned)."""
    due, now = connection.zscore(ScheduleKeys.due, "s"), server_now(connection).timestamp()
    assert due is not None and now - 1 < due / 1000 <= now + interval + 1


def run_once(connection: Redis, schedule_id: str) -> None:
    """One run of the schedule recorded in its state (counters, last run), as the scheduler leaves it."""
    schedules.run_now(connection, schedule_id)
    assert schedules.get(connection, schedule_id)["counters"]["runs"] == 1


def test_a_replace_is_one_round_trip_and_keeps_the_run_state_origin_and_one_template(
    connection: Redis, trips: list[int]
) -> None:
    schedules.upsert(connection, "s", BODY, origin="code")
    run_once(connection, "s")
    before = schedules.get(connection, "s")
    trips[0] = 0
    answer, created = schedules.upsert(connection, "s", {**BODY, "interval": 90, "args": [1]})
    assert trips[0] == 1 and not created
    assert answer["interval"] == 90 and answer["args"] == [1] and answer["origin"] == "code"
    assert answer["counters"] == before["counters"] and answer["last_run_at"] == before["last_run_at"]
    assert answer["created_at"] == before["created_at"] and answer["updated_at"] > before["updated_at"]
    assert schedules.get(connection, "s") == answer
    assert connection.hlen(ScheduleKeys.templates) == 1  # the 60 s template went with its last user
    assert connection.hgetall(ScheduleKeys.template_refs) == {connection.hget(ScheduleKeys.schedule("s"), "t"): b"1"}
    assert_due_within(connection, 90)


def test_a_new_schedule_and_an_unchanged_one_are_one_round_trip_each(connection: Redis, trips: list[int]) -> None:
    answer, created = schedules.upsert(connection, "s", BODY)
    assert trips[0] == 1 and created and answer["origin"] == "api" and answer["created_at"] == answer["updated_at"]
    before = snapshot(connection)
    trips[0] = 0
    again, created = schedules.upsert(connection, "s", BODY)
    assert trips[0] == 1 and not created and again == answer
    assert snapshot(connection) == before  # nothing written


def pause_it(connection: Redis) -> None:
    schedules.pause(connection, "s", "maintenance")


def own_by_file(connection: Redis) -> None:
    schedules.delete(connection, "s")
    schedules.upsert(connection, "s", BODY, origin="file")


def skip_holidays(connection: Redis) -> None:
    schedules.upsert(connection, "s", {**BODY, "skip_calendars": ["holidays"]})


def damage_state(connection: Redis) -> None:
    connection.hset(ScheduleKeys.schedule("s"), "s", "x,y")


def host_clock_off(connection: Redis) -> None:
    clock.set_offset(clock.offset() - 300)  # this process's idea of Redis's clock five minutes behind


@pytest.mark.parametrize(
    ("stored", "check"),
    [
        (pause_it, lambda a: a["paused"] and a["next_run_at"] is None and a["note"] == "maintenance"),
        (own_by_file, lambda a: a["origin"] == "api"),
        (skip_holidays, lambda a: a["skip_calendars"] == []),
        (damage_state, lambda a: a["counters"]["runs"] == 0),  # written from a clean hash, as before
        (host_clock_off, lambda a: a["next_run_at"] is not None),
    ],
    ids=["paused", "file-owned", "other-calendars", "damaged-state", "clock-off"],
)
def test_a_replace_the_one_trip_plan_does_not_fit_is_written_from_its_answer_in_two_round_trips(
    connection: Redis,
    trips: list[int],
    monkeypatch: pytest.MonkeyPatch,
    stored: Callable[[Redis], None],
    check: Callable[[dict[str, Any]], bool],
) -> None:
    monkeypatch.setattr(clock, "_offset", clock.offset())  # restored after
    calendars.put(connection, "holidays", {"dates": ["2030-01-01"]})
    schedules.upsert(connection, "s", BODY)
    stored(connection)
    trips[0] = 0
    answer, created = schedules.upsert(connection, "s", {**BODY, "interval": 30})
    # A damaged record is written from a clean hash, as a new schedule (201), as before.
    assert trips[0] == 2 and created == (stored is damage_state) and answer["interval"] == 30 and check(answer)
    assert schedules.get(connection, "s") == answer
    if not answer["paused"]:  # due by Redis's clock, whatever this host's says
        assert_due_within(connection, 30)
    assert abs(clock.offset() - (server_now(connection).timestamp() - time.time())) < 1  # learnt from the answer
    trips[0] = 0
    schedules.upsert(connection, "s", {**BODY, "interval": 20, **({"paused": True} if answer["paused"] else {})})
    assert trips[0] == 1  # what was stored now fits the plan

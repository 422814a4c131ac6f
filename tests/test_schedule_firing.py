"""Firing in-process with an injected clock: run ids, misfire and coalesce, overlap, fencing, repeat, scale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core.errors import InvalidField
from service.core.keys import SCHEDULER_LOCK_KEY as LEASE_KEY
from service.core.keys import ScheduleKeys, doorbell_key
from service.jobs.context import scheduled_for
from service.jobs.describe import describe
from service.jobs.model import get_lanes
from service.jobs.operations import fetch
from service.ops import hooks
from service.schedules import operations as schedules
from service.schedules.runs import Firing, plan_due
from service.schedules.scheduler import BATCH, CHUNK, ServiceScheduler
from service.schedules.spec import to_ms
from service.schedules.store import read
from service.tasks.registry import task
from service.workers.worker import ServiceWorker

pytestmark = pytest.mark.matrix

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@task("testing.logical_time")
def logical_time() -> str | None:
    """Return the run's scheduled_for as the task sees it."""
    moment = scheduled_for()
    return moment.isoformat() if moment else None


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def scheduler(connection: Redis, clock: Clock) -> ServiceScheduler:
    leader = ServiceScheduler(connection, clock=clock)
    assert leader.acquire_lock()
    return leader


def add(connection: Redis, schedule_id: str, now: datetime = T0, **body: object) -> dict:
    body.setdefault("task", "diag.echo")
    return schedules.upsert(connection, schedule_id, body, now=now)[0]


def queued(connection: Redis, lane: str = "default") -> list[str]:
    return [i.decode() for i in connection.lrange(f"rq:queue:{lane}", 0, -1)]


def run_worker(connection: Redis) -> None:
    ServiceWorker(get_lanes(connection), connection=connection).work(burst=True)


def statuses(connection: Redis, schedule_id: str) -> list[tuple[str, str]]:
    """(scheduled_for, status) of the recorded runs, oldest first."""
    return [(r["scheduled_for"][11:19], r["status"]) for r in reversed(schedules.runs(connection, schedule_id)["runs"])]


def test_every_run_is_a_fresh_job_with_its_logical_time(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "tick", task="testing.logical_time", interval=10)
    for _ in range(3):
        clock.advance(10)
        assert scheduler.enqueue_jobs() == 1
        run_worker(connection)
    ids = ["tick-1893456010", "tick-1893456020", "tick-1893456030"]
    jobs = [describe(fetch(connection, job_id)) for job_id in ids]
    assert [j["status"] for j in jobs] == ["finished"] * 3
    assert [j["result"] for j in jobs] == [
        "2030-01-01T00:00:10+00:00",
        "2030-01-01T00:00:20+00:00",
        "2030-01-01T00:00:30+00:00",
    ]
    assert [j["scheduled_for"] for j in jobs] == [
        "2030-01-01T00:00:10Z",
        "2030-01-01T00:00:20Z",
        "2030-01-01T00:00:30Z",
    ]
    stored = schedules.get(connection, "tick")
    assert stored["last_job_id"] == ids[-1] and stored["counters"]["runs"] == 3
    assert stored["next_run_at"] == "2030-01-01T00:00:40Z"


def test_nothing_fires_before_its_time(connection: Redis, clock: Clock, scheduler: ServiceScheduler) -> None:
    add(connection, "later", interval=10)
    clock.advance(9.9)
    assert scheduler.enqueue_jobs() == 0
    assert queued(connection) == []


def test_after_downtime_missed_runs_coalesce_into_one(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "co", interval=10)
    clock.advance(55)  # due at :10 :20 :30 :40 :50 while no scheduler ran
    assert scheduler.enqueue_jobs() == 1
    assert queued(connection) == ["co-1893456050"]
    assert statuses(connection, "co") == [
        ("00:00:10", "coalesced"),
        ("00:00:20", "coalesced"),
        ("00:00:30", "coalesced"),
        ("00:00:40", "coalesced"),
        ("00:00:50", "queued"),
    ]
    stored = schedules.get(connection, "co")
    assert stored["counters"]["coalesced"] == 4 and stored["next_run_at"] == "2030-01-01T00:01:00Z"


def test_a_downtime_longer_than_one_catch_up_pass_still_coalesces_into_one_run(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "long", interval=1)
    clock.advance(2500.5)  # 2,500 due times missed: passes of 1,000 catch up, only the one reaching now fires
    while connection.zscore(ScheduleKeys.due, "long") <= to_ms(clock.now):
        scheduler.enqueue_jobs()
    assert queued(connection) == ["long-1893458500"]
    stored = schedules.get(connection, "long")
    assert stored["counters"]["runs"] == 1 and stored["counters"]["coalesced"] == 2499
    assert stored["next_run_at"] == "2030-01-01T00:41:41Z"


def test_without_coalesce_every_missed_run_within_grace_runs_and_older_ones_are_missed(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "all", interval=10, coalesce=False, overlap="allow", misfire_grace_time=25)
    clock.advance(55)
    assert scheduler.enqueue_jobs() == 3
    assert queued(connection) == ["all-1893456030", "all-1893456040", "all-1893456050"]
    assert statuses(connection, "all")[:2] == [("00:00:10", "missed"), ("00:00:20", "missed")]
    assert schedules.get(connection, "all")["counters"] == {
        "runs": 3,
        "missed": 2,
        "skipped": 0,
        "dropped": 0,
        "coalesced": 0,
    }


def test_a_run_later_than_its_grace_is_missed_not_run(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "strict", interval=60, misfire_grace_time=5)
    clock.advance(67)
    assert scheduler.enqueue_jobs() == 0
    assert statuses(connection, "strict") == [("00:01:00", "missed")]
    assert schedules.get(connection, "strict")["next_run_at"] == "2030-01-01T00:02:00Z"


def test_overlap_skip_skips_while_the_previous_run_is_queued(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "sk", interval=10)
    for _ in range(3):
        clock.advance(10)
        scheduler.enqueue_jobs()
    assert queued(connection) == ["sk-1893456010"]
    assert [s for _, s in statuses(connection, "sk")] == ["queued", "skipped", "skipped"]
    run_worker(connection)
    clock.advance(10)
    scheduler.enqueue_jobs()
    assert queued(connection) == ["sk-1893456040"]
    assert schedules.get(connection, "sk")["counters"]["skipped"] == 2


def test_overlap_buffer_one_keeps_one_and_drops_the_rest(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "buf", interval=10, overlap="buffer_one")
    for _ in range(3):
        clock.advance(10)
        scheduler.enqueue_jobs()
    assert queued(connection) == ["buf-1893456010"]
    assert [s for _, s in statuses(connection, "buf")] == ["queued", "buffered", "dropped"]
    assert schedules.get(connection, "buf")["buffered_run_for"] == "2030-01-01T00:00:20Z"
    run_worker(connection)  # the first run ends: the buffered one starts at the next pass
    assert scheduler.enqueue_jobs() == 1
    assert queued(connection) == ["buf-1893456020"]
    stored = schedules.get(connection, "buf")
    assert stored["buffered_run_for"] is None and stored["counters"]["dropped"] == 1


def test_overlap_allow_runs_alongside(connection: Redis, clock: Clock, scheduler: ServiceScheduler) -> None:
    add(connection, "al", interval=10, overlap="allow")
    for _ in range(3):
        clock.advance(10)
        scheduler.enqueue_jobs()
    assert queued(connection) == ["al-1893456010", "al-1893456020", "al-1893456030"]


def test_overlap_cancel_other_cancels_the_queued_previous_run(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "cx", interval=10, overlap="cancel_other")
    clock.advance(10)
    scheduler.enqueue_jobs()
    clock.advance(10)
    scheduler.enqueue_jobs()
    assert queued(connection) == ["cx-1893456020"]
    assert describe(fetch(connection, "cx-1893456010"))["status"] == "canceled"


def test_cancel_other_cancels_a_run_created_earlier_in_the_same_pass(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "cy", interval=10, overlap="cancel_other", coalesce=False)
    clock.advance(30)  # :10, :20 and :30 all fire in one pass; each cancels the one before
    assert scheduler.enqueue_jobs() == 3
    assert queued(connection) == ["cy-1893456030"]
    assert [describe(fetch(connection, f"cy-18934560{s}"))["status"] for s in (10, 20)] == ["canceled"] * 2


def test_a_stale_leader_cannot_fire(connection: Redis, clock: Clock, scheduler: ServiceScheduler) -> None:
    add(connection, "fenced", interval=10)
    clock.advance(10)
    connection.set(LEASE_KEY, "another-owner", px=4000)  # our lease lapsed and someone else took it
    assert scheduler.fire_due_schedules() == 0
    assert queued(connection) == []
    assert connection.zscore(ScheduleKeys.due, "fenced") == to_ms(T0 + timedelta(seconds=10))


def test_two_firers_with_the_same_plan_create_one_job(connection: Redis, clock: Clock) -> None:
    add(connection, "race", interval=10, overlap="allow")
    clock.advance(10)
    stored = read(connection, "race")
    assert stored is not None
    score = int(connection.zscore(ScheduleKeys.due, "race"))
    results = [
        Firing(connection).run([plan_due(stored, score, clock.now)], {"race": stored}, clock.now) for _ in range(2)
    ]
    assert results == [[[1, 0, 0]], [-2]]
    assert queued(connection) == ["race-1893456010"]


def test_repeat_stops_after_that_many_runs(connection: Redis, clock: Clock, scheduler: ServiceScheduler) -> None:
    add(connection, "thrice", interval=10, repeat=3, overlap="allow")
    for _ in range(5):
        clock.advance(10)
        scheduler.enqueue_jobs()
    assert len(queued(connection)) == 3
    assert schedules.get(connection, "thrice")["next_run_at"] is None


def test_one_shot_fires_once(connection: Redis, clock: Clock, scheduler: ServiceScheduler) -> None:
    add(connection, "once", at="2030-01-01T01:00:00+01:00")  # = T0
    assert scheduler.enqueue_jobs() == 1
    clock.advance(3600)
    assert scheduler.enqueue_jobs() == 0
    assert queued(connection) == ["once-1893456000"]
    assert schedules.get(connection, "once")["next_run_at"] is None
    # Re-saving the same one-shot does not arm it again.
    assert add(connection, "once", at="2030-01-01T01:00:00+01:00")["next_run_at"] is None


def test_jitter_delays_within_its_bound(connection: Redis) -> None:
    add(connection, "jit", interval=60, jitter=20)
    score = connection.zscore(ScheduleKeys.due, "jit")
    due = to_ms(T0 + timedelta(seconds=60))
    assert due <= score <= due + 20_000


def test_pause_on_failure_pauses_the_schedule_after_a_failed_run(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    add(connection, "brittle", task="diag.fail", interval=10, pause_on_failure=True)
    clock.advance(10)
    scheduler.enqueue_jobs()
    run_worker(connection)
    stored = schedules.get(connection, "brittle")
    assert stored["paused"] is True
    assert "brittle-1893456010 failed" in stored["note"]
    clock.advance(10)
    assert scheduler.enqueue_jobs() == 0


def test_a_paused_schedule_does_not_fire(connection: Redis, clock: Clock, scheduler: ServiceScheduler) -> None:
    add(connection, "quiet", interval=10)
    schedules.pause(connection, "quiet")
    clock.advance(30)
    assert scheduler.enqueue_jobs() == 0
    schedules.resume(connection, "quiet", now=clock.now)
    clock.advance(10)
    assert scheduler.enqueue_jobs() == 1
    assert queued(connection) == ["quiet-1893456040"]


def test_python_helper_upserts_from_code(connection: Redis) -> None:
    created = schedules.schedule("nightly", "diag.echo", connection=connection, args=[1], cron="0 3 * * *")
    again = schedules.schedule("nightly", "diag.echo", connection=connection, args=[1], cron="0 3 * * *")
    assert created == again and created["origin"] == "code"
    assert schedules.list_schedules(connection)["schedules"] == [created]


def test_a_burst_of_due_runs_is_fired_with_a_few_lua_calls(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    count = 2000
    spec = {"task": "diag.echo", "interval": 60}
    created = schedules.upsert_many(connection, {f"user-{n:05d}": spec for n in range(count)}, now=T0)
    assert created == {"created": count, "updated": 0, "unchanged": 0}
    again = schedules.upsert_many(connection, {f"user-{n:05d}": spec for n in range(count)}, now=T0)
    assert again == {"created": 0, "updated": 0, "unchanged": count}
    clock.advance(60)
    connection.config_resetstat()
    assert scheduler.enqueue_jobs() == count
    stats = connection.info("commandstats")
    # Calls that ran (a cold script cache adds a NOSCRIPT answer and a retry per script: not a call that ran).
    ran = [stats.get(name, {}) for name in ("cmdstat_evalsha", "cmdstat_eval")]
    scripts = sum(s.get("calls", 0) - s.get("failed_calls", 0) - s.get("rejected_calls", 0) for s in ran)
    # One fire call per chunk and one read per batch (each call holds Redis for ~half a millisecond), not one a run.
    assert scripts == -(-count // CHUNK) + -(-count // BATCH) and scripts < count // 20
    assert queued(connection) == [f"user-{n:05d}-1893456060" for n in range(count)]
    assert connection.llen(doorbell_key("default")) == count  # one wake-up per run, as push_job_id rings
    job = fetch(connection, "user-00007-1893456060")
    assert job.meta == {"schedule_id": "user-00007", "scheduled_for": "2030-01-01T00:01:00Z"}
    totals = {k.decode(): int(v) for k, v in connection.hgetall(ScheduleKeys.stats).items()}
    assert totals["runs"] == totals["lag_count"] == count
    assert schedules.get(connection, "user-01999")["counters"]["runs"] == 1
    page = schedules.list_schedules(connection, limit=1000)
    assert len(page["schedules"]) == 1000 and page["next_cursor"] == "user-00999"


@pytest.mark.parametrize("scripts_lost", [False, True], ids=["scripts-loaded", "scripts-lost"])
def test_a_pass_over_several_batches_reads_each_next_batch_ahead_and_fires_every_run_once(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler, monkeypatch: pytest.MonkeyPatch, scripts_lost: bool
) -> None:
    monkeypatch.setattr("service.schedules.scheduler.BATCH", 7)
    monkeypatch.setattr("service.schedules.scheduler.CHUNK", 3)
    specs = {f"u{n:02d}": {"task": "diag.echo", "interval": 60, "args": [n]} for n in range(25)}
    schedules.upsert_many(connection, specs, now=T0)
    connection.zadd(ScheduleKeys.due, {"stray": to_ms(T0)})  # a member without a schedule: dropped, not fired
    clock.advance(60)
    if scripts_lost:  # as after a Redis restart: every call sent before a script is loaded again answers NOSCRIPT
        connection.script_flush()
    assert scheduler.enqueue_jobs() == 25
    assert queued(connection) == [f"u{n:02d}-1893456060" for n in range(25)]  # in due order all the same
    assert fetch(connection, "u24-1893456060").args == [24]  # a short call stored as it is reads as RQ's
    assert connection.zcount(ScheduleKeys.due, "-inf", to_ms(clock.now)) == 0
    assert scheduler.enqueue_jobs() == 0


def test_bulk_upsert_validates_everything_before_writing(connection: Redis) -> None:
    items = {"good": {"task": "diag.echo", "interval": 5}, "bad": {"task": "diag.echo", "interval": 0}}
    with pytest.raises(InvalidField) as caught:
        schedules.upsert_many(connection, items)
    assert caught.value.message.startswith("bad.interval")
    assert connection.keys("svc:*") == []


def test_events_reach_hooks_and_totals_are_kept_for_metrics(
    connection: Redis, clock: Clock, scheduler: ServiceScheduler
) -> None:
    events: list[tuple[str, str, int, str | None]] = []

    def record(event: dict) -> None:
        events.append((event["event"], event["schedule_id"], event["count"], event.get("reason")))

    names = ("schedule.fired", "schedule.missed", "schedule.coalesced", "schedule.skipped")
    for name in names:
        hooks.on(name)(record)
    try:
        add(connection, "ev", interval=10, misfire_grace_time=15)
        clock.advance(40)  # :10 and :20 are too late, :30 coalesces into :40
        scheduler.enqueue_jobs()
        clock.advance(10)  # :50 comes while :40 is still queued
        scheduler.enqueue_jobs()
    finally:
        for name in names:
            hooks.unsubscribe(name, record)
    assert events == [
        ("schedule.missed", "ev", 2, None),
        ("schedule.coalesced", "ev", 1, None),
        ("schedule.fired", "ev", 1, None),
        ("schedule.skipped", "ev", 1, "skipped"),
    ]
    totals = {k.decode(): int(v) for k, v in connection.hgetall(ScheduleKeys.stats).items()}
    assert totals["runs"] == 1 and totals["missed"] == 2 and totals["coalesced"] == 1 and totals["skipped"] == 1
    assert totals["lag_count"] == 1 and sum(v for k, v in totals.items() if k.startswith("lag_ms_bucket_")) == 1

"""Per-task limits: the acquire script's concurrency slots and start-rate window, and the Limiter around it."""

from __future__ import annotations

import pytest
from redis import Redis

from service.core import keys
from service.tasks.registry import TaskSpec
from service.workers import limits
from service.workers.limits import ACQUIRE, CONCURRENCY_RETRY_SECONDS, SLOT_GRACE_SECONDS, Limiter

RUNNING, STARTS = keys.limit_running_key("t"), keys.limit_starts_key("t")


def acquire(connection: Redis, job_id: str, concurrency: int = 0, starts: int = 0, period: float = 0) -> float:
    """One call of the acquire script (slots are held an hour at most)."""
    reply = ACQUIRE(
        keys=[RUNNING, STARTS, limits.NO_SLOT], args=[job_id, concurrency, 3600, starts, period, 0], client=connection
    )
    return float(reply)


def redis_now(connection: Redis) -> float:
    seconds, micros = connection.time()
    return seconds + micros / 1e6


def test_concurrency_slots_admit_that_many_jobs(connection: Redis) -> None:
    before = redis_now(connection)
    assert acquire(connection, "a", concurrency=2) == 0
    assert acquire(connection, "b", concurrency=2) == 0
    assert acquire(connection, "c", concurrency=2) == -1
    assert acquire(connection, "a", concurrency=2) == 0  # a job holding a slot may ask again
    slots = dict(connection.zrange(RUNNING, 0, -1, withscores=True))
    assert set(slots) == {b"a", b"b"}
    assert all(before + 3600 <= expiry <= redis_now(connection) + 3600 for expiry in slots.values())


def test_a_slot_past_its_expiry_on_redis_clock_is_free_again(connection: Redis) -> None:
    connection.zadd(RUNNING, {"a": redis_now(connection) + 60})
    assert acquire(connection, "b", concurrency=1) == -1
    connection.zadd(RUNNING, {"a": redis_now(connection) - 1})  # a's slot expired (its worker vanished)
    assert acquire(connection, "b", concurrency=1) == 0
    assert connection.zrange(RUNNING, 0, -1) == [b"b"]


def test_the_start_rate_window_admits_that_many_starts_per_period(connection: Redis) -> None:
    now = redis_now(connection)
    connection.zadd(STARTS, {"old:1": now - 12, "a:1": now - 6})  # one start in the window, one before it
    assert acquire(connection, "b", starts=2, period=10) == 0
    assert acquire(connection, "c", starts=2, period=10) == pytest.approx(4, abs=0.5)  # until a's start leaves
    assert connection.zcard(STARTS) == 2
    assert 0 < connection.pttl(STARTS) <= 11_000
    started = connection.zscore(STARTS, connection.zrange(STARTS, -1, -1)[0])
    assert now <= started <= redis_now(connection)  # recorded at Redis's time


def test_a_job_over_its_rate_takes_no_concurrency_slot(connection: Redis) -> None:
    acquire(connection, "a", concurrency=5, starts=1, period=10)
    assert acquire(connection, "b", concurrency=5, starts=1, period=10) == pytest.approx(10, abs=0.5)
    assert connection.zrange(RUNNING, 0, -1) == [b"a"]


def test_no_limit_records_nothing(connection: Redis) -> None:
    assert acquire(connection, "a") == 0
    assert not connection.exists(RUNNING, STARTS)


def test_the_limiter_holds_a_slot_for_the_job_timeout_plus_grace(connection: Redis) -> None:
    spec = TaskSpec("t", func=print, concurrency=1)
    limiter = Limiter(connection)
    before = redis_now(connection)
    assert limiter.acquire(spec, "a", timeout_seconds=30) == (0, False)
    expiry = connection.zscore(RUNNING, "a")
    assert before + 30 + SLOT_GRACE_SECONDS <= expiry <= redis_now(connection) + 30 + SLOT_GRACE_SECONDS
    wait, group_held = limiter.acquire(spec, "b", timeout_seconds=30)
    assert 0.5 * CONCURRENCY_RETRY_SECONDS <= wait <= 1.5 * CONCURRENCY_RETRY_SECONDS and not group_held
    with connection.pipeline() as pipe:
        limits.release(pipe, spec, "a")
        pipe.execute()
    assert limiter.acquire(spec, "b", timeout_seconds=30) == (0, False)


def test_the_limiter_waits_for_the_rate_window(connection: Redis) -> None:
    spec = TaskSpec("t", func=print, rate_limit=(1, 60.0))
    limiter = Limiter(connection)
    assert limiter.acquire(spec, "a", timeout_seconds=30) == (0, False)
    assert limiter.acquire(spec, "b", timeout_seconds=30)[0] == pytest.approx(60, abs=5)
    assert not connection.exists(RUNNING)


def test_a_group_cap_holds_per_group_and_names_the_group_as_the_limit(connection: Redis) -> None:
    spec = TaskSpec("t", func=print, group_concurrency=1)
    limiter = Limiter(connection)
    assert limiter.acquire(spec, "a1", timeout_seconds=30, group="a") == (0, False)
    assert limiter.acquire(spec, "b1", timeout_seconds=30, group="b") == (0, False)  # another group: its own cap
    wait, group_held = limiter.acquire(spec, "a2", timeout_seconds=30, group="a")
    assert wait > 0 and group_held
    assert limiter.acquire(spec, "x", timeout_seconds=30) == (0, False)  # no group: no group cap
    connection.hset(keys.held_groups_key("default"), "a", 1)
    with connection.pipeline() as pipe:
        limits.release(pipe, spec, "a1", "a", "default")
        pipe.execute()
    assert limiter.acquire(spec, "a2", timeout_seconds=30, group="a") == (0, False)
    assert not connection.hexists(keys.held_groups_key("default"), "a")  # the group is no longer held

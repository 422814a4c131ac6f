"""Per-task limits: the acquire script's concurrency slots and start-rate window, and the Limiter around it."""

from __future__ import annotations

import time

import pytest
from redis import Redis

from service.core import keys
from service.tasks.registry import TaskSpec
from service.workers import limits
from service.workers.limits import ACQUIRE, CONCURRENCY_RETRY_SECONDS, SLOT_GRACE_SECONDS, Limiter

RUNNING, STARTS = keys.limit_running_key("t"), keys.limit_starts_key("t")


def acquire(
    connection: Redis, now: float, job_id: str, concurrency: int = 0, starts: int = 0, period: float = 0
) -> float:
    """One call of the acquire script at time `now` (slots expire an hour later)."""
    reply = ACQUIRE(
        keys=[RUNNING, STARTS], args=[now, job_id, concurrency, now + 3600, starts, period], client=connection
    )
    return float(reply)


def test_concurrency_slots_admit_that_many_jobs(connection: Redis) -> None:
    assert acquire(connection, 1000, "a", concurrency=2) == 0
    assert acquire(connection, 1000, "b", concurrency=2) == 0
    assert acquire(connection, 1000, "c", concurrency=2) == -1
    assert acquire(connection, 1000, "a", concurrency=2) == 0  # a job holding a slot may ask again
    assert connection.zrange(RUNNING, 0, -1, withscores=True) == [(b"a", 4600.0), (b"b", 4600.0)]


def test_a_slot_past_its_expiry_is_free_again(connection: Redis) -> None:
    acquire(connection, 1000, "a", concurrency=1)
    assert acquire(connection, 4000, "b", concurrency=1) == -1
    assert acquire(connection, 4601, "b", concurrency=1) == 0  # a's slot expired (its worker vanished)
    assert connection.zrange(RUNNING, 0, -1) == [b"b"]


def test_the_start_rate_window_admits_that_many_starts_per_period(connection: Redis) -> None:
    assert acquire(connection, 1000, "a", starts=2, period=10) == 0
    assert acquire(connection, 1004, "b", starts=2, period=10) == 0
    assert acquire(connection, 1005, "c", starts=2, period=10) == 5  # until a's start leaves the window
    assert acquire(connection, 1010.5, "c", starts=2, period=10) == 0
    assert connection.zcard(STARTS) == 2
    assert 0 < connection.pttl(STARTS) <= 11_000


def test_a_job_over_its_rate_takes_no_concurrency_slot(connection: Redis) -> None:
    acquire(connection, 1000, "a", concurrency=5, starts=1, period=10)
    assert acquire(connection, 1001, "b", concurrency=5, starts=1, period=10) == 9
    assert connection.zrange(RUNNING, 0, -1) == [b"a"]


def test_no_limit_records_nothing(connection: Redis) -> None:
    assert acquire(connection, 1000, "a") == 0
    assert not connection.exists(RUNNING, STARTS)


def test_the_limiter_holds_a_slot_for_the_job_timeout_plus_grace(connection: Redis) -> None:
    spec = TaskSpec("t", func=print, concurrency=1)
    limiter = Limiter(connection)
    before = time.time()
    assert limiter.acquire(spec, "a", timeout_seconds=30) == 0
    expiry = connection.zscore(RUNNING, "a")
    assert before + 30 + SLOT_GRACE_SECONDS <= expiry <= time.time() + 30 + SLOT_GRACE_SECONDS
    wait = limiter.acquire(spec, "b", timeout_seconds=30)
    assert 0.5 * CONCURRENCY_RETRY_SECONDS <= wait <= 1.5 * CONCURRENCY_RETRY_SECONDS
    with connection.pipeline() as pipe:
        limits.release(pipe, spec, "a")
        pipe.execute()
    assert limiter.acquire(spec, "b", timeout_seconds=30) == 0


def test_the_limiter_waits_for_the_rate_window(connection: Redis) -> None:
    spec = TaskSpec("t", func=print, rate_limit=(1, 60.0))
    limiter = Limiter(connection)
    assert limiter.acquire(spec, "a", timeout_seconds=30) == 0
    assert limiter.acquire(spec, "b", timeout_seconds=30) == pytest.approx(60, abs=5)
    assert not connection.exists(RUNNING)

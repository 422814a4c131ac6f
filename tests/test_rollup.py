"""The charts' rollup: one summary a minute from the counters and gauges, one writer a minute, 24 h kept."""

from __future__ import annotations

import json

import pytest
from redis import Redis

from service.core import metrics
from service.core.keys import METRICS_KEY, ROLLUP_KEY, ROLLUP_MINUTE_KEY, ROLLUP_TOTALS_KEY, WORKERS_KEY, ScheduleKeys
from service.jobs.enqueue import enqueue
from service.jobs.schemas import JobRequest
from service.ops import rollup
from service.ops.rollup import RETAIN_MINUTES, Rollup, quantile
from service.tasks.registry import load_task_modules
from tests.conftest import TASK_MODULES
from tests.helpers import wait_until
from tests.processes import Processes

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


class Clock:
    """A settable clock for Rollup (seconds since the epoch)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def finish(connection: Redis, lane: str, count: int, failed: int = 0, waits: tuple[float, ...] = ()) -> None:
    """Count jobs as the worker path does, through service.core.metrics."""
    with connection.pipeline() as pipe:
        metrics.count(pipe, "jobs_finished", "diag.echo", lane, amount=count)
        if failed:
            metrics.count(pipe, "jobs_failed", "diag.fail", lane, amount=failed)
        for seconds in waits:
            metrics.observe(pipe, "job_wait_seconds", seconds, lane)
        pipe.execute()


def summaries(connection: Redis) -> list[dict]:
    return [json.loads(raw) for raw in connection.lrange(ROLLUP_KEY, 0, -1)]


def test_a_summary_holds_per_minute_counts_latency_gauges_and_lag(connection: Redis) -> None:
    load_task_modules(TASK_MODULES)
    clock = Clock()
    writer = Rollup(connection, clock)
    assert writer.tick()
    first = summaries(connection)[0]
    assert first["t"] == T0 and first["finished"] == [None, None, None]  # nothing to take a difference from yet

    finish(connection, "default", 120, failed=3, waits=(0.001,) * 50 + (0.02,) * 50)
    finish(connection, "low", 30)
    for _ in range(4):
        enqueue(connection, JobRequest(task="diag.echo", queue="high"))
    connection.sadd(WORKERS_KEY, "rq:worker:a", "rq:worker:b")
    connection.hset(ScheduleKeys.stats, mapping={"lag_ms_bucket_10": 9, "lag_ms_bucket_50": 1})
    connection.hset(ScheduleKeys.stats, mapping={"lag_count": 10, "lag_ms_sum": 60})
    clock.now += 60
    assert writer.tick()

    latest = summaries(connection)[0]
    assert latest["t"] == T0 + 60
    assert latest["finished"] == [0, 120, 30] and latest["failed"] == [0, 3, 0]
    assert latest["depth"] == [4, 0, 0] and latest["age"][0] >= 0 and latest["age"][1:] == [0, 0]
    assert latest["workers"] == 2
    assert 0 < latest["wait_p50"][1] <= 0.005 and 0.01 < latest["wait_p95"][1] <= 0.025
    assert latest["wait_p50"][0] is None and latest["wait_p50"][2] is None  # no job started there
    assert latest["lag_mean"] == 0.006 and 0.01 < latest["lag_p95"] <= 0.05


def test_counts_are_per_minute_whatever_the_interval_and_survive_a_counter_reset(connection: Redis) -> None:
    clock = Clock()
    writer = Rollup(connection, clock)
    writer.tick()
    finish(connection, "high", 300)
    clock.now += 150  # nobody wrote for two and a half minutes
    writer.tick()
    assert summaries(connection)[0]["finished"] == [120, 0, 0]
    connection.delete(METRICS_KEY)  # counters lost (a flushed hash): the new totals are the increase
    finish(connection, "high", 7)
    clock.now += 60
    writer.tick()
    assert summaries(connection)[0]["finished"] == [7, 0, 0]


def test_one_process_writes_each_minute_and_minutes_only_move_forward(connection: Redis) -> None:
    ahead, behind = Clock(T0 + 61), Clock(T0 + 5)
    processes = [Rollup(connection, Clock(T0 + 1)) for _ in range(5)]
    assert [p.tick() for p in processes] == [True, False, False, False, False]
    assert [p.tick() for p in processes] == [False] * 5  # asked once a minute, not once a call
    assert Rollup(connection, ahead).tick() is True  # a host whose clock runs ahead writes the next minute
    assert Rollup(connection, behind).tick() is False  # one whose clock lags writes no older minute
    assert [s["t"] for s in summaries(connection)] == [T0 + 61, T0 + 1]


def test_the_rollup_keeps_24_hours_in_bounded_memory_and_expires_when_idle(connection: Redis) -> None:
    clock = Clock()
    writer = Rollup(connection, clock)
    for minute in range(RETAIN_MINUTES + 60):
        finish(connection, ("high", "default", "low")[minute % 3], 100, failed=1, waits=(0.003, 0.2))
        clock.now = T0 + 60 * minute
        assert writer.tick()
    kept = summaries(connection)
    assert len(kept) == RETAIN_MINUTES
    assert kept[0]["t"] == T0 + 60 * (RETAIN_MINUTES + 59) and kept[-1]["t"] == T0 + 60 * 60
    used = connection.memory_usage(ROLLUP_KEY) + connection.memory_usage(ROLLUP_TOTALS_KEY)
    print(f"rollup: {used} bytes for {RETAIN_MINUTES} summaries")  # docs/dashboard.md quotes this figure
    assert used < 1_000_000
    assert 0 < connection.ttl(ROLLUP_KEY) <= rollup.KEEP_SECONDS


def test_series_reads_a_window_oldest_first_with_gaps_and_skips_what_it_cannot_read(connection: Redis) -> None:
    clock = Clock()
    writer = Rollup(connection, clock)
    for minute in (0, 1, 2, 10, 11):  # nobody wrote minutes 3-9
        clock.now = T0 + 60 * minute
        finish(connection, "low", 60)
        writer.tick()
    connection.lpush(ROLLUP_KEY, b"not json", json.dumps({"t": "soon"}))
    columns = rollup.series(connection, minutes=60, now=T0 + 60 * 11)
    assert columns["lanes"] == ["high", "default", "low"]
    assert columns["t"] == [T0 + 60 * m for m in (0, 1, 2, 3, 10, 11)]
    # The gap is None, not a line across it; the 60 jobs counted over it are spread over its 8 minutes.
    assert columns["finished"]["low"] == [None, 60, 60, None, 7.5, 60]
    assert columns["workers"] == [0, 0, 0, None, 0, 0]
    recent = rollup.series(connection, minutes=5, now=T0 + 60 * 11)
    assert recent["t"] == [T0 + 600, T0 + 660] and recent["from"] == T0 + 360


@pytest.mark.parametrize(
    ("q", "cumulative", "expected"),
    [
        (0.5, [0, 10, 10], 1.5),  # all in (1, 2]: the middle of the bucket
        (0.5, [5, 10, 10], 1.0),  # half at or below 1
        (0.95, [0, 0, 10], 2.0),  # all beyond the last bound: that bound
        (0.5, [0, 0, 0], None),  # nothing observed
    ],
)
def test_quantile_is_interpolated_within_its_bucket(q: float, cumulative: list[float], expected: float | None) -> None:
    assert quantile(q, (1.0, 2.0), cumulative) == expected


def test_a_running_worker_and_a_scheduler_write_the_rollup(processes: Processes, connection: Redis) -> None:
    processes.worker("--heartbeat-seconds", "0.2")
    first = wait_until(lambda: summaries(connection), timeout=30, what="the worker's first summary")
    assert first[0]["workers"] == 1 and first[0]["depth"] == [0, 0, 0]
    processes.stop_all()
    connection.delete(ROLLUP_MINUTE_KEY)  # as if a minute had passed
    processes.scheduler()
    wait_until(lambda: len(summaries(connection)) == 2, timeout=30, what="the scheduler's summary")

"""Crash safety: a SIGKILLed worker's job comes back (or fails with a reason); kills never lose a job."""

from __future__ import annotations

import random
import time

import pytest
from redis import Redis
from rq.registry import FinishedJobRegistry

from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import (
    enqueue,
    enqueue_many,
    kill_group,
    lanes_and_claims_empty,
    recorded,
    start_worker,
    status,
)

pytestmark = pytest.mark.matrix

# With the test timings (FAST) a dead worker is noticed within 1 s + 0.5 s;
# the bound asserted leaves room for a loaded machine.
DETECTION_BOUND_SECONDS = 15


def test_sigkilled_workers_job_is_retried_and_finishes_once(connection: Redis, processes: Processes) -> None:
    job = enqueue(connection, "workertest.sleep_once", "crash", 2)
    victim = start_worker(processes, name="victim")
    wait_until(lambda: status(job) == "started", timeout=20, what="the job to start")
    start_worker(processes, name="rescuer")
    wait_until(lambda: connection.scard("svc:claimers") >= 1, timeout=10)
    kill_group(victim)
    killed_at = time.monotonic()
    wait_until(lambda: status(job) == "finished", timeout=30, what="the rescuer to finish the job")
    assert time.monotonic() - killed_at < DETECTION_BOUND_SECONDS
    assert recorded(connection, "crash") == ["1", "1"]  # two starts
    assert FinishedJobRegistry("default", connection=connection).get_job_ids() == [job.id]
    assert connection.hget(job.key, "crashes") == b"1"
    assert connection.zcard("rq:failed:default") == 0


def test_sigkilled_workers_job_without_attempts_left_fails_with_the_reason(
    connection: Redis, processes: Processes
) -> None:
    job = enqueue(connection, "diag.sleep", 30)
    victim = start_worker(processes, "--crash-retries", "0", name="victim")
    wait_until(lambda: status(job) == "started", timeout=20, what="the job to start")
    start_worker(processes, "--crash-retries", "0", name="rescuer")
    kill_group(victim)
    wait_until(lambda: status(job) == "failed", timeout=30, what="the job to fail")
    reason = job.latest_result().exc_string or ""
    assert "WorkerDied" in reason and "died" in reason
    assert connection.hget("svc:metrics:poison_jobs", "diag.sleep") == b"1"


def test_a_job_that_kills_its_horse_every_time_stops_after_its_attempts(
    connection: Redis, processes: Processes
) -> None:
    job = enqueue(connection, "workertest.suicide")
    after = enqueue(connection, "diag.echo", "next")
    worker = start_worker(processes, "--fork", "--crash-retries", "2")
    wait_until(lambda: status(job) == "failed", timeout=30, what="the poison job to fail")
    assert "work horse died (signal 9)" in (job.latest_result().exc_string or "")
    assert connection.hget(job.key, "crashes") == b"3"  # 1 run + 2 redeliveries
    assert connection.hget(job.key, "attempts") == b"3"
    assert connection.hget("svc:metrics:poison_jobs", "workertest.suicide") == b"1"
    wait_until(lambda: status(after) == "finished", timeout=20, what="the next job to run")
    assert worker.alive()


def test_many_sigkills_while_draining_three_lanes_lose_no_job(connection: Redis, processes: Processes) -> None:
    # The figures: 60 SIGKILLs of a three-lane worker draining 4,000 jobs.
    jobs, kills = 4000, 60
    lanes = ("high", "default", "low")
    enqueue_many(connection, "diag.record", [(lanes[i % 3], ("drain", f"v{i}")) for i in range(jobs)])
    rng = random.Random(5)
    for round_ in range(kills):
        worker = start_worker(processes, "high", "default", "low", "--mode", "weighted", name=f"w{round_}")
        done = len(set(recorded(connection, "drain")))
        target = min(done + rng.randint(20, 60), jobs)
        # When the jobs left are all in dead workers' claimed lists, only the reaper
        # brings them back: within the promised 60 s (heartbeat TTL, then a reap).
        wait_until(lambda t=target, w=worker: len(set(recorded(connection, "drain"))) >= t or not w.alive(), 60)
        kill_group(worker)
    start_worker(processes, "high", "default", "low", name="final")
    wait_until(lambda: len(set(recorded(connection, "drain"))) == jobs, timeout=120, what="every job to run")
    wait_until(lambda: lanes_and_claims_empty(connection), timeout=30, what="lanes and claimed lists to empty")
    values = recorded(connection, "drain")
    assert set(values) == {f"v{i}" for i in range(jobs)}
    print(f"{kills} kills, {jobs} jobs: {len(values) - jobs} re-executions")

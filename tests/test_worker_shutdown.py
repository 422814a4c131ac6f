"""Warm shutdown: SIGTERM lets the running job finish; past the grace period it is requeued, not lost."""

from __future__ import annotations

import signal

import pytest
from redis import Redis

from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import enqueue, recorded, start_worker, status


@pytest.mark.parametrize("mode", ["--no-fork", "--fork"])
def test_sigterm_to_the_whole_group_lets_the_running_job_finish(
    connection: Redis, processes: Processes, mode: str
) -> None:
    job = enqueue(connection, "diag.sleep", 1.5)
    worker = start_worker(processes, mode, "--grace-seconds", "20")
    wait_until(lambda: status(job) == "started", timeout=20, what="the job to start")
    worker.signal(signal.SIGTERM, group=True)  # Heroku: every process of the dyno
    assert worker.wait(timeout=30) == 0
    assert status(job) == "finished"
    assert connection.hget(job.key, "attempts") == b"1"


def test_sigterm_with_a_job_longer_than_the_grace_requeues_it_for_another_worker(
    connection: Redis, processes: Processes
) -> None:
    job = enqueue(connection, "workertest.sleep_once", "long", 30)
    first = start_worker(processes, "--grace-seconds", "1", name="first")
    wait_until(lambda: status(job) == "started", timeout=20, what="the job to start")
    first.signal(signal.SIGTERM, group=True)
    assert first.wait(timeout=15) == 0  # long before the 30 s the job wanted
    assert status(job) == "queued"
    assert connection.lrange("rq:queue:default", 0, -1) == [job.id.encode()]
    assert connection.zcard("rq:wip:default") == 0
    start_worker(processes, name="second")
    wait_until(lambda: status(job) == "finished", timeout=20, what="the second worker to finish it")
    assert recorded(connection, "long") == ["1", "1"]
    assert connection.zcard("rq:failed:default") == 0
    job.refresh()
    assert job.retries_left is None  # no retry of its own policy was used


def test_sigterm_to_an_idle_worker_exits_at_once(connection: Redis, processes: Processes) -> None:
    worker = start_worker(processes)
    wait_until(lambda: connection.keys("svc:alive:*"), timeout=20, what="the worker to be up")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0
    assert connection.keys("svc:alive:*") == []

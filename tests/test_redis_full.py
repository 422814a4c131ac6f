"""Workers through a Redis that refuses writes (out of memory, MISCONF): no outcome lost or stored twice.

Redis refuses a script at its first write and a transaction whole, so a
claim or an outcome it refused changed nothing; the worker keeps what it
could not store and stores it once Redis can write again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq.registry import FailedJobRegistry

from service.core.connection import connect
from service.dev.embedded_redis import EmbeddedRedis
from tests.helpers import wait_until
from tests.processes import Processes
from tests.redis_full import HOW, refusing_writes
from tests.worker_fixtures import enqueue, enqueue_many, recorded, start_worker, status

pytestmark = [pytest.mark.slow, pytest.mark.matrix]
# How long the fault lasts: several heartbeat TTLs of the test timings (1 s).
FAULT_SECONDS = 4


@pytest.fixture
def redis(private_redis: EmbeddedRedis) -> Iterator[Redis]:
    client = connect(private_redis.url, role="worker")
    yield client
    client.close()


@pytest.mark.parametrize("kind", HOW)
def test_a_worker_keeps_an_outcome_redis_refused_and_stores_it_once_redis_can_write(
    redis: Redis, private_redis: EmbeddedRedis, processes: Processes, kind: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": private_redis.url}
    ended = tmp_path / "ended"
    job = enqueue(redis, "workertest.run_then_touch", "full", str(ended), 1.5)
    busy = start_worker(processes, "default", "--name", "busy", name="busy", env=env)
    # An idle worker on another lane: its reaper must not take the busy one for dead.
    idle = start_worker(processes, "low", "--name", "idle", name="idle", env=env)
    wait_until(lambda: status(job) == "started", timeout=30, what="the job to start")
    wait_until(lambda: redis.exists("svc:alive:idle"), timeout=30, what="the idle worker to start")
    waiting = enqueue_many(redis, "diag.record", [("default", ("after", f"v{i}")) for i in range(5)])
    with refusing_writes(redis, kind):
        wait_until(ended.exists, timeout=30, what="the job's run to end while Redis refuses writes")
        deadline = time.monotonic() + FAULT_SECONDS  # the fault lasts; meanwhile nothing may change
        while time.monotonic() < deadline:
            assert status(job) == "started"  # the outcome waits in the worker
            assert redis.llen("rq:queue:default") == len(waiting)  # refused claims took nothing
            assert busy.alive() and idle.alive()
            time.sleep(0.2)  # the fault's length, not a wait for anything
    wait_until(lambda: status(job) == "finished", timeout=30, what="the outcome to be stored")
    wait_until(lambda: len(recorded(redis, "after")) == len(waiting), timeout=30, what="the waiting jobs")
    assert recorded(redis, "full") == ["1"]  # ran once: never redelivered
    assert [r.type.name for r in job.results()] == ["SUCCESSFUL"]  # stored once
    assert redis.hget(job.key, "crashes") is None
    assert sorted(recorded(redis, "after")) == [f"v{i}" for i in range(5)]
    assert FailedJobRegistry("default", connection=redis).get_job_ids() == []
    assert busy.output().count("Worker busy: Redis refuses writes") == 1  # logged once per state change
    assert busy.output().count("Worker busy: Redis accepts writes again") == 1
    assert "Traceback" not in busy.output() + idle.output()  # nothing crashed, RQ's scheduler child neither

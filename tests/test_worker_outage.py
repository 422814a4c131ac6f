"""Redis outages: workers ride through a Redis crash and restart, and a frozen Redis, losing no job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from service.core.connection import connect
from service.dev.embedded_redis import EmbeddedRedis
from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import enqueue_many, lanes_and_claims_empty, recorded, start_worker

pytestmark = pytest.mark.matrix


@pytest.fixture
def private(private_redis: EmbeddedRedis) -> Iterator[Redis]:
    client = connect(private_redis.url, role="worker")
    yield client
    client.close()


def done(client: Redis, key: str) -> set[str]:
    try:
        return set(recorded(client, key))
    except Exception:  # Redis is down right now
        return set()


def test_worker_rides_through_a_redis_crash_and_restart(
    private_redis: EmbeddedRedis, private: Redis, processes: Processes
) -> None:
    jobs = 1000
    enqueue_many(private, "diag.record", [(("high", "default", "low")[i % 3], ("rec", f"v{i}")) for i in range(jobs)])
    worker = start_worker(processes, "high", "default", "low", env={"REDIS_URL": private_redis.url})
    wait_until(lambda: len(done(private, "rec")) >= 200, timeout=30, what="the worker to be busy")
    private_redis.kill()  # SIGKILL: a crash; the AOF keeps what was acknowledged
    wait_until(lambda: "Redis unavailable" in worker.output(), timeout=30, what="the worker to notice")
    private_redis.start()
    wait_until(lambda: len(done(private, "rec")) == jobs, timeout=120, what="every job to run")
    assert done(private, "rec") == {f"v{i}" for i in range(jobs)}
    wait_until(lambda: lanes_and_claims_empty(private), timeout=30)
    assert worker.alive()
    assert worker.output().count("Redis unavailable") <= 3  # once per state change, not per retry


def test_worker_rides_through_a_frozen_redis(
    private_redis: EmbeddedRedis, private: Redis, processes: Processes
) -> None:
    jobs = 300
    enqueue_many(private, "diag.record", [("default", ("rec", f"v{i}")) for i in range(jobs)])
    worker = start_worker(processes, env={"REDIS_URL": private_redis.url})
    wait_until(lambda: len(done(private, "rec")) >= 50, timeout=30, what="the worker to be busy")
    private_redis.freeze()
    try:
        # A frozen Redis answers nothing: the worker's 5 s socket timeout fires.
        wait_until(lambda: "Redis unavailable" in worker.output(), timeout=30, what="the worker to notice")
    finally:
        private_redis.thaw()
    wait_until(lambda: len(done(private, "rec")) == jobs, timeout=60, what="every job to run")
    assert worker.alive()


def test_worker_started_while_redis_is_down_waits_for_it(tmp_path: Path, processes: Processes) -> None:
    server = EmbeddedRedis(tmp_path / "late")
    worker = start_worker(processes, env={"REDIS_URL": server.url})
    wait_until(lambda: "Redis unavailable" in worker.output(), timeout=30, what="the worker to notice")
    server.start()
    try:
        client = connect(server.url, role="worker")
        enqueue_many(client, "diag.record", [("default", ("late", "x"))])
        wait_until(lambda: done(client, "late") == {"x"}, timeout=30, what="the job to run")
        assert worker.alive()
    finally:
        server.stop()

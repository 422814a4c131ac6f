"""Faults across the whole service: a 30 s Redis outage under the API, workers and a scheduler;
a scheduler leader SIGKILLed in the middle of a burst of due runs; a planted pickle."""

from __future__ import annotations

import pickle
import signal
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.dev.embedded_redis import EmbeddedRedis
from service.jobs.model import ServiceQueue
from service.schedules import operations as schedules
from service.tasks.registry import load_task_modules
from tests.api import Api
from tests.conftest import TASK_MODULES, TOKEN
from tests.helpers import wait_until
from tests.ledger import assert_nothing_lost
from tests.processes import Processes

pytestmark = pytest.mark.matrix

OUTAGE_SECONDS = 30
load_task_modules(TASK_MODULES)


def test_thirty_second_redis_outage_gives_fast_503s_and_everything_recovers(
    private_redis: EmbeddedRedis, processes: Processes
) -> None:
    url = private_redis.url
    redis = connect(url, role="worker")
    api = Api(create_app(Settings(redis_url=url, api_tokens=(TOKEN,), task_modules=TASK_MODULES)).test_client())
    worker = processes.worker("high", "default", "low", env={"REDIS_URL": url})
    scheduler = processes.scheduler(env={"REDIS_URL": url})
    schedules.upsert(redis, "tick", {"task": "diag.record", "args": ["ticks", "t"], "interval": 1})
    accepted = [api.enqueue(task="diag.record", args=["outage", f"before-{i}"])["args"][1] for i in range(50)]
    wait_until(lambda: redis.llen("diag:ticks") >= 2, timeout=20, what="the schedule to fire")

    private_redis.stop()
    down_until = time.monotonic() + OUTAGE_SECONDS
    answers = []
    while time.monotonic() < down_until:
        started = time.monotonic()
        status, body = api.post("/jobs", {"task": "diag.record", "args": ["outage", "during"]})
        answers.append((status, body["error"]["code"], time.monotonic() - started))
        assert api.get("/readyz")[0] == 503
        time.sleep(1)  # pacing the client's requests through the outage, not synchronisation
    assert {(s, c) for s, c, _ in answers} == {(503, "redis_unavailable")}
    assert max(seconds for _, _, seconds in answers) < 3.0
    assert worker.alive() and scheduler.alive()

    private_redis.start()
    wait_until(lambda: api.get("/readyz")[0] == 200, timeout=15, what="the API to see Redis again")
    ticks_after_restart = redis.llen("diag:ticks")
    accepted += [api.enqueue(task="diag.record", args=["outage", f"after-{i}"])["args"][1] for i in range(50)]
    wait_until(lambda: redis.llen("diag:outage") >= len(accepted), timeout=60, what="every accepted job to run")
    wait_until(lambda: redis.llen("diag:ticks") >= ticks_after_restart + 2, timeout=30, what="the schedule again")
    assert_nothing_lost(redis, "outage", accepted)
    assert b"during" not in redis.lrange("diag:outage", 0, -1)  # a 503 wrote nothing
    assert worker.alive() and scheduler.alive()


def test_scheduler_leader_killed_mid_burst_loses_and_doubles_no_due_time(
    connection: Redis, processes: Processes
) -> None:
    count = 20_000
    due = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)
    items = {f"user-{i}": {"task": "diag.echo", "args": [i], "at": due.isoformat()} for i in range(count)}
    schedules.upsert_many(connection, items)
    first = processes.scheduler(name="first")
    wait_until(lambda: connection.exists("rq:scheduler_lock"), timeout=20, what="a leader")
    second = processes.scheduler(name="second")
    lane = ServiceQueue("default", connection=connection)
    wait_until(lambda: lane.count > 0, timeout=30, interval=0.005, what="the burst to start")
    leader = first if connection.get("rq:scheduler_lock") and "took" in first.output() else second
    leader.signal(signal.SIGKILL)
    at_kill = lane.count
    print(f"leader killed with {at_kill} of {count} runs in the lane")
    assert 0 < at_kill < count  # the kill landed in the middle of the burst
    wait_until(lambda: lane.count >= count, timeout=90, what="every due run in its lane")
    ids = lane.get_job_ids()
    assert len(ids) == count and len(set(ids)) == count
    assert set(ids) == {f"user-{i}-{int(due.timestamp())}" for i in range(count)}


def test_a_planted_pickle_is_never_unpickled(
    connection: Redis, redis_url: str, processes: Processes, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            import os

            return (os.system, (f"touch {marker}",))

    payload = zlib.compress(pickle.dumps(Exploit()))
    connection.hset(
        "rq:job:planted",
        mapping={"data": payload, "status": "queued", "origin": "default", "created_at": "2026-01-01T00:00:00.000000Z"},
    )
    connection.rpush("rq:queue:default", "planted")
    api = Api(create_app(Settings(redis_url=redis_url, api_tokens=(TOKEN,))).test_client())
    status, shown = api.get("/jobs/planted")
    assert status == 200 and shown["task"] is None and shown["error"].startswith("DeserializationError")
    status, listed = api.get("/jobs?status=queued")
    assert status == 200 and [j["id"] for j in listed["jobs"]] == ["planted"]
    processes.worker()
    wait_until(lambda: connection.hget("rq:job:planted", "status") == b"failed", timeout=20, what="the job to fail")
    assert not marker.exists()

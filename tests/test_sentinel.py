"""Sentinel failover: the service follows a SIGKILLed primary's replica without a restart, losing no acknowledged job.

A real set-up on loopback from the redis-server binary: one primary, one
replica (AOF on both) and three sentinels. The API (REDIS_MIN_REPLICAS_ACK=1:
a 202 means a replica has the job), two worker.py and one scheduler.py
processes run on a redis+sentinel:// URL. The primary is SIGKILLed in the
middle of a stream of enqueues and interval runs, and restarted after the
failover as its supervisor would (it rejoins as a replica, so WAIT can be
satisfied again).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.core.errors import ConfigError
from tests.conftest import AUTH, TOKEN
from tests.helpers import wait_until
from tests.processes import Processes
from tests.redis_topology import SERVICE_NAME, SentinelSetup, start_sentinel_setup

# Sentinels judge the primary down after this long without an answer.
DOWN_AFTER_MS = 1500


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = start_sentinel_setup(tmp_path / "redis", down_after_ms=DOWN_AFTER_MS)
    try:
        wait_until(lambda: ready_for_failover(setup), timeout=30, interval=0.2, what="sentinels to see each other")
        yield setup
    finally:
        setup.stop()


def ready_for_failover(setup: SentinelSetup) -> bool:
    """Every sentinel knows the replica and the two other sentinels, and the replica is in sync."""
    for sentinel in setup.sentinels:
        client = Redis("127.0.0.1", sentinel.port, socket_timeout=1)
        try:
            state = client.sentinel_master(SERVICE_NAME)
        finally:
            client.close()
        if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
            return False
    replica = Redis("127.0.0.1", setup.replica.port, socket_timeout=1)
    try:
        return replica.info("replication").get("master_link_status") == "up"
    finally:
        replica.close()


@pytest.mark.parametrize(
    "url", ["redis+sentinel://h1:26379,h2:26380,h3/queue", "redis+sentinel://:pw@127.0.0.1:26379/queue/2"]
)
def test_sentinel_urls_are_accepted(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}, role="worker").redis_url == url


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_URL": "redis+sentinel://h1:26379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+sentinel://h1:port/queue"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+sentinel://h1:26379/queue?client_type=slave"}, "REDIS_URL"),
        ({"REDIS_MIN_REPLICAS_ACK": "one"}, "REDIS_MIN_REPLICAS_ACK"),
        ({"REDIS_REPLICA_ACK_TIMEOUT_MS": "5000"}, "REDIS_REPLICA_ACK_TIMEOUT_MS"),
    ],
)
def test_bad_sentinel_settings_are_refused_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": "redis+sentinel://h:26379/queue", **env}, role="worker")
    assert caught.value.message.startswith(f"{variable}:")


class EnqueueStream:
    """Enqueues diag.record jobs one after another, remembering every answer and the acknowledged jobs."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.number = 0
        self.acked: dict[int, str] = {}
        self.answers: list[tuple[float, int]] = []

    def send(self) -> int:
        self.number += 1
        body = {"task": "diag.record", "args": ["acked", self.number], "idempotency_key": f"acked-{self.number}"}
        response = self.client.post("/jobs", json=body, headers=AUTH)
        self.answers.append((time.monotonic(), response.status_code))
        assert response.status_code in (202, 503), f"enqueue {self.number} answered {response.status_code}"
        if response.status_code == 202:
            self.acked[self.number] = response.get_json()["id"]
        return response.status_code

    def answers_since(self, moment: float) -> list[int]:
        return [status for at, status in self.answers if at > moment]


def ride_through_failover(setup: SentinelSetup, stream: EnqueueStream) -> float:
    """SIGKILL the primary mid-stream and keep enqueuing until the API acknowledges again; return the kill time.

    Once the sentinels have promoted the replica, the old primary is started
    again (as its supervisor would): it rejoins as a replica, so WAIT 1 can
    be satisfied again.
    """
    old_primary = setup.master_address()
    setup.primary.kill()
    killed_at = time.monotonic()
    restarted = False
    while stream.answers_since(killed_at).count(202) < 15:
        assert time.monotonic() < killed_at + 90, f"no recovery after the kill: {stream.answers[-10:]}"
        if not restarted and setup.master_address() not in (None, old_primary):
            setup.primary.start()
            restarted = True
        stream.send()
        time.sleep(0.05)
    return killed_at


def test_service_follows_a_failover_and_loses_no_acknowledged_job(
    sentinel_setup: SentinelSetup, process_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**process_env, "REDIS_URL": sentinel_setup.url, "REDIS_MIN_REPLICAS_ACK": "1"}
    app = create_app(Settings.from_env(env, role="web"))
    client = app.test_client()
    runner = Processes(env, tmp_path)
    observer = connect(sentinel_setup.url, role="worker")
    try:
        for name in ("worker-a", "worker-b"):
            runner.start(name, sys.executable, "worker.py", "high", "default", "low", "--heartbeat-seconds", "1")
        runner.start("scheduler", sys.executable, "scheduler.py")
        schedule = {"task": "diag.record", "args": ["ticks", "tick"], "interval": 1}
        assert client.put("/schedules/ticks", json=schedule, headers=AUTH).status_code in (200, 201)
        wait_until(lambda: observer.llen("diag:ticks") >= 2, timeout=30, what="the schedule to fire")
        stream = EnqueueStream(client)
        for _ in range(20):
            assert stream.send() == 202

        killed_at = ride_through_failover(sentinel_setup, stream)

        assert sentinel_setup.master_address() == ("127.0.0.1", sentinel_setup.replica.port)
        # 503 only during the switch: once the API acknowledged again, it kept doing so.
        after = stream.answers_since(killed_at)
        assert 503 not in after[after.index(202) :], after
        ticks_after_switch = observer.llen("diag:ticks")
        # Nothing lost: every job acknowledged (202), before or after the kill, runs and finishes.
        wait_until(
            lambda: set(stream.acked) <= {int(v) for v in observer.lrange("diag:acked", 0, -1)},
            timeout=60,
            interval=0.2,
            what="every acknowledged job to run",
        )
        for job_id in stream.acked.values():
            wait_until(lambda job_id=job_id: finished_job(client, job_id), timeout=30, what=f"job {job_id}")
        # The scheduler and the workers carry on; readiness and the dashboard answer.
        wait_until(lambda: observer.llen("diag:ticks") >= ticks_after_switch + 3, timeout=30, what="interval runs")
        # Delayed jobs still move: RQ's scheduler inside the workers came back too.
        delayed = client.post("/jobs", json={"task": "diag.echo", "args": ["later"], "delay": 1}, headers=AUTH)
        assert delayed.status_code == 202, delayed.get_json()
        wait_until(lambda: finished_job(client, delayed.get_json()["id"]), timeout=30, what="a delayed job")
        assert client.get("/readyz").status_code == 200
        assert client.get("/dashboard/0/data/queues.json", headers=basic_auth()).status_code == 200
        assert all(p.alive() for p in runner.started), "a service process exited"
        back = next(at for at, status in stream.answers if at > killed_at and status == 202) - killed_at
        print(
            f"failover: {len(stream.acked)} jobs acknowledged, {after.count(503)} answers 503, back after {back:.1f} s"
        )
    except BaseException:
        print(runner.dump_logs())
        for process in sentinel_setup.processes():
            print(f"----- {process.name} -----\n{process.log_tail(30)}")
        raise
    finally:
        runner.stop_all()
        observer.close()


def finished_job(client: FlaskClient, job_id: str | None) -> dict | None:
    response = client.get(f"/jobs/{job_id}", headers=AUTH)
    job = response.get_json() if response.status_code == 200 else None
    return job if job and job["status"] == "finished" else None


def basic_auth() -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()}

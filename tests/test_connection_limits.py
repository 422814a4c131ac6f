"""Redis at maxclients: the API answers 503 at once without knocking again on every request, no process
leaks a file descriptor over a thousand refusals, and web, worker and scheduler carry on once Redis has room."""

from __future__ import annotations

import os

import psutil
import pytest
from redis import Redis

from service.core.connection import connect
from service.dev.embedded_redis import EmbeddedRedis, free_port
from service.schedules import operations as schedules
from service.tasks.registry import load_task_modules
from tests.api import HttpApi
from tests.conftest import TASK_MODULES
from tests.helpers import wait_until
from tests.processes import Processes

pytestmark = pytest.mark.matrix  # a fault or scheduler test: make test runs it on every server

REQUESTS = 1000
# Descriptors a process may open for good during the episode (e.g. a child RQ restarts): a count, not a rate.
FD_SLACK = 3
load_task_modules(TASK_MODULES)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def refused(redis: Redis) -> int:
    return int(redis.info("stats")["rejected_connections"])


def test_redis_at_maxclients_gets_503s_without_a_connection_storm_or_fd_leak_and_all_recover(
    private_redis: EmbeddedRedis, processes: Processes
) -> None:
    env = {"REDIS_URL": private_redis.url}
    redis = connect(private_redis.url, role="worker")
    port = free_port()
    web = processes.web(port, env=env)
    worker = processes.worker("high", "default", "low", env=env)
    scheduler = processes.scheduler(env=env)
    api = HttpApi(port)
    schedules.upsert(redis, "tick", {"task": "diag.record", "args": ["ticks", "t"], "interval": 1})
    for n in range(20):
        assert api.post("/jobs", {"task": "diag.record", "args": ["limits", n]}).status == 202
    wait_until(lambda: redis.llen("diag:limits") == 20 and redis.llen("diag:ticks") >= 1, timeout=30, what="warm-up")
    pids = {"web": psutil.Process(web.pid).children()[0].pid, "worker": worker.pid, "scheduler": scheduler.pid}
    before = {name: open_fds(pid) for name, pid in pids.items()}

    redis.config_set("maxclients", 1)  # this test's connection is the one client left: every new one is refused
    redis.client_kill_filter(_type="normal", skipme=True)
    redis.client_kill_filter(_type="pubsub", skipme=True)
    refused_before = refused(redis)
    answers = [api.post("/jobs", {"task": "diag.record", "args": ["limits", "x"]}, timeout=3) for _ in range(REQUESTS)]
    web_attempts = refused(redis) - refused_before
    assert {(a.status, a.body["error"]["code"]) for a in answers} == {(503, "redis_unavailable")}
    assert all("maxclients" in a.body["error"]["message"] and a.headers["Retry-After"] for a in answers)
    # The web backs off: a refused connection keeps it from opening another for a second (worker and
    # scheduler retries are counted here too). Without the back-off each request tried 2-4 times.
    assert web_attempts < REQUESTS // 4, web_attempts
    wait_until(
        lambda: "Redis unavailable" in worker.output() and "Redis unavailable" in scheduler.output(),
        timeout=30,
        what="worker and scheduler to meet the refusals",
    )
    during = {name: open_fds(pid) for name, pid in pids.items()}

    redis.config_set("maxclients", 10000)
    wait_until(lambda: api.post("/jobs", {"task": "diag.record", "args": ["limits", "after"]}).status == 202)
    wait_until(lambda: b"after" in redis.lrange("diag:limits", 0, -1), timeout=30, what="the worker to run again")
    ticks = redis.llen("diag:ticks")
    wait_until(lambda: redis.llen("diag:ticks") > ticks, timeout=30, what="the schedule to fire again")
    after = {name: open_fds(pid) for name, pid in pids.items()}
    print(f"open fds before / during / after {REQUESTS} refused requests: {before} / {during} / {after}; "
          f"connections refused while they were answered: {web_attempts}")  # fmt: skip
    assert all(after[name] <= before[name] + FD_SLACK for name in pids), (before, after)
    assert b"x" not in redis.lrange("diag:limits", 0, -1)  # a 503 wrote nothing
    assert web.alive() and worker.alive() and scheduler.alive()
    assert psutil.Process(web.pid).children()[0].pid == pids["web"]

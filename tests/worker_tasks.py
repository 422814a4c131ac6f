"""Tasks used only by the worker tests (registered in worker processes through TASK_MODULES)."""

from __future__ import annotations

import json
import os
import signal
import time

from rq import get_current_job

from service.tasks.registry import task


def _connection():  # type: ignore[no-untyped-def]
    job = get_current_job()
    assert job is not None
    return job.connection


@task("workertest.limited", concurrency=2)
def limited(key: str, seconds: float) -> None:
    """Hold one of two concurrency slots for `seconds`; record [start, end] in diag:<key>."""
    started = time.time()
    time.sleep(seconds)
    _connection().rpush(f"diag:{key}", json.dumps([started, time.time()]))


@task("workertest.rated", rate_limit="4/s")
def rated(key: str) -> None:
    """Record the start time in diag:<key>; at most 4 starts per second across workers."""
    _connection().rpush(f"diag:{key}", time.time())


@task("workertest.sleep_once")
def sleep_once(key: str, seconds: float) -> str:
    """Sleep `seconds` the first time (per key), return at once afterwards; count runs in diag:<key>."""
    if _connection().rpush(f"diag:{key}", 1) == 1:
        time.sleep(seconds)
    return "done"


@task("workertest.suicide")
def suicide() -> None:
    """Kill the process running it (a poison job: it takes its worker down every time)."""
    os.kill(os.getpid(), signal.SIGKILL)


def _redis_time() -> float:
    seconds, micros = _connection().time()
    return seconds + micros / 1e6


@task("workertest.stamp")
def stamp(key: str) -> None:
    """Record [Redis's time, this host's time] at the start in diag:<key>."""
    _connection().rpush(f"diag:{key}", json.dumps([_redis_time(), time.time()]))


@task("workertest.rated_stamp", rate_limit="4/s")
def rated_stamp(key: str) -> None:
    """As stamp, at most 4 starts per second across workers."""
    _connection().rpush(f"diag:{key}", json.dumps([_redis_time(), time.time()]))


@task("workertest.run_then_touch")
def run_then_touch(key: str, path: str, seconds: float) -> str:
    """Count the run in diag:<key>, sleep `seconds`, then create the file `path` (the run's end, seen without Redis)."""
    _connection().rpush(f"diag:{key}", 1)
    time.sleep(seconds)
    with open(path, "w") as marker:
        marker.write("done")
    return "done"


@task("workertest.group_capped", group_concurrency=1)
def group_capped(key: str, seconds: float) -> None:
    """Run `seconds`, at most one per group at a time; record [group, start, end] in diag:<key>."""
    job = get_current_job()
    assert job is not None
    started = time.time()
    time.sleep(seconds)
    job.connection.rpush(f"diag:{key}", json.dumps([getattr(job, "group", None), started, time.time()]))


@task("workertest.on_batch")
def on_batch(key: str, batch: dict) -> None:  # type: ignore[type-arg]
    """A batch's callback: record its tally in diag:<key>."""
    _connection().rpush(f"diag:{key}", json.dumps(batch, sort_keys=True))


@task("workertest.together")
def together(key: str, count: int) -> None:
    """Arrive at barrier diag:<key>, then end as soon as `count` jobs have arrived (they end at once)."""
    connection = _connection()
    connection.rpush(f"diag:{key}", 1)
    deadline = time.monotonic() + 30
    while connection.llen(f"diag:{key}") < count and time.monotonic() < deadline:
        time.sleep(0.001)


@task("workertest.note")
def note(key: str) -> None:
    """Record the running job's id in diag:<key> (which jobs ran, seen apart from their stored outcomes)."""
    job = get_current_job()
    assert job is not None
    job.connection.rpush(f"diag:{key}", job.id)


@task("workertest.record_slowly")
def record_slowly(key: str, value: str, seconds: float) -> None:
    """Record `value` in diag:<key> as diag.record does, then take `seconds` more (past the prefetch bound)."""
    _connection().rpush(f"diag:{key}", value)
    time.sleep(seconds)


@task("workertest.hold")
def hold(key: str) -> str:
    """Count the run in diag:<key>, then run until the key diag:<key>:release exists (the test lets it end)."""
    connection = _connection()
    connection.rpush(f"diag:{key}", 1)
    deadline = time.monotonic() + 60
    while not connection.exists(f"diag:{key}:release") and time.monotonic() < deadline:
        time.sleep(0.005)
    return "released"

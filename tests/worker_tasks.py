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

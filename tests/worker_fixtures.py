"""Helpers for the worker tests: enqueue straight into the lanes, fast worker timings, kills."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any

from redis import Redis

from service.jobs.model import ServiceJob, ServiceQueue
from tests.processes import Processes, ServiceProcess

# Test timings: heartbeat every 0.25 s, dead after 1 s, reaper every 0.5 s.
FAST = ("--heartbeat-seconds", "0.25")
TEST_TASKS = {"TASK_MODULES": "tests.worker_tasks"}


def enqueue(connection: Redis, task: str, *args: Any, lane: str = "default", **options: Any) -> ServiceJob:
    """Enqueue a registered task by name into `lane` (what the API does, minus validation)."""
    return ServiceQueue(lane, connection=connection).enqueue_call(task, args=list(args), **options)


def enqueue_many(connection: Redis, task: str, calls: Iterable[tuple[str, tuple[Any, ...]]]) -> list[ServiceJob]:
    """Enqueue (lane, args) calls of `task` in one pipeline."""
    queues: dict[str, ServiceQueue] = {}
    jobs = []
    with connection.pipeline() as pipe:
        for lane, args in calls:
            queue = queues.setdefault(lane, ServiceQueue(lane, connection=connection))
            jobs.append(queue.enqueue_call(task, args=list(args), pipeline=pipe))
        pipe.execute()
    return jobs


def recorded(connection: Redis, key: str) -> list[str]:
    return [v.decode() for v in connection.lrange(f"diag:{key}", 0, -1)]


def start_worker(
    processes: Processes, *args: str, name: str = "worker", env: dict[str, str] | None = None
) -> ServiceProcess:
    return processes.worker(*args, *FAST, name=name, env={**TEST_TASKS, **(env or {})})


def kill_group(process: ServiceProcess) -> None:
    """SIGKILL the worker and everything in its process group, as an OOM kill or a lost machine would."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def status(job: ServiceJob) -> str:
    value = job.get_status(refresh=True)
    return str(value.value) if value is not None else "missing"


def lanes_and_claims_empty(connection: Redis) -> bool:
    lanes = sum(connection.llen(f"rq:queue:{lane}") for lane in ("high", "default", "low"))
    claimed = sum(connection.llen(key) for key in connection.scan_iter("svc:claimed:*"))
    return lanes == 0 and claimed == 0

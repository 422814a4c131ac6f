"""Diagnostic tasks: always registered, used by tests, benchmarks and operators."""

from __future__ import annotations

import time
from typing import Any

from rq import get_current_job

from service.jobs.context import progress
from service.tasks.registry import task


@task("diag.echo")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Return the arguments it was given."""
    return {"args": list(args), "kwargs": kwargs}


@task("diag.sleep")
def sleep(seconds: float) -> float:
    """Sleep for `seconds`, then return them."""
    time.sleep(float(seconds))
    return seconds


@task("diag.fail")
def fail(message: str = "boom") -> None:
    """Raise an exception carrying `message`."""
    raise RuntimeError(message)


@task("diag.record")
def record(key: str, value: Any) -> int:
    """Append `value` to the Redis list diag:<key>; return the list's new length."""
    job = get_current_job()
    assert job is not None, "diag.record runs inside a job"
    return int(job.connection.rpush(f"diag:{key}", value))


@task("diag.progress")
def progress_steps(steps: int, seconds: float) -> int:
    """Sleep `seconds` `steps` times, reporting {"done": i, "total": steps} as progress after each; return `steps`."""
    for done in range(1, int(steps) + 1):
        time.sleep(float(seconds))
        progress({"done": done, "total": steps})
    return steps

"""Tasks used only by the tests (loaded through TASK_MODULES in test apps and processes)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from rq import get_current_job

from service.jobs.context import progress, scheduled_for
from service.ops.hooks import on
from service.tasks.registry import task


@task("testing.flaky")
def flaky(key: str, failures: int) -> int:
    """Fail the first `failures` runs for `key`, then return the run number."""
    job = get_current_job()
    assert job is not None
    run = int(job.connection.incr(f"testing:flaky:{key}"))
    if run <= failures:
        raise RuntimeError(f"failure {run} of {failures}")
    return run


@task("testing.unique_sleep", unique=True)
def unique_sleep(seconds: float) -> float:
    """Sleep; only one job per argument list may be queued or running at a time."""
    time.sleep(seconds)
    return seconds


@task("testing.hold")
def hold(label: str, seconds: float) -> str:
    """Sleep `seconds` while `label` shows as the current call and the progress of the dashboard tests' running job."""
    progress(label)
    time.sleep(seconds)
    return label


@task("testing.report")
def report(values: list[Any], key: str) -> int:
    """Report each of `values` as progress; before each after the first, wait for the test to push to `key`."""
    job = get_current_job()
    assert job is not None
    for n, value in enumerate(values):
        deadline = time.monotonic() + 60
        while n and not job.connection.lpop(key) and time.monotonic() < deadline:
            time.sleep(0.02)
        progress(value)
    return len(values)


@task("testing.report_many")
def report_many(count: int, value: Any = 0.5) -> int:
    """Report `value` as progress `count` times."""
    for _ in range(count):
        progress(value)
    return count


@task("testing.report_set")
def report_set() -> None:
    """Report a value that is not JSON as progress."""
    progress({1, 2})


@task("testing.fail_with_webhook", webhook_url=os.environ.get("TEST_WEBHOOK_URL") or "http://127.0.0.1:9/unset")
def fail_with_webhook(message: str) -> None:
    """Fail; the task's webhook receives the failure event."""
    raise RuntimeError(message)


@on("job.failed")
def record_failure(event: dict) -> None:
    """Append each failure event to the file named by TEST_HOOK_LOG (when set)."""
    path = os.environ.get("TEST_HOOK_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps(event) + "\n")


@task("testing.returns_nan")
def returns_nan() -> float:
    return float("nan")  # json.dumps would write NaN, which no JSON client can read


@task("testing.returns_set")
def returns_set() -> set[int]:
    """Return a value that is not JSON (a worker cannot store it)."""
    return {1, 2}


@task("testing.bad_meta")
def bad_meta() -> None:
    """Put a value that is not JSON in the job's meta, then fail (the retry would have to save that meta)."""
    job = get_current_job()
    assert job is not None
    job.meta["seen"] = {1, 2}
    raise RuntimeError("failed with meta that is not JSON")


@task("testing.tick")
def tick(key: str) -> None:
    """Append '<due epoch s> <Redis time at start>' to diag:<key> (the soak: no run early, none doubled)."""
    job = get_current_job()
    assert job is not None
    due = scheduled_for(job)
    assert due is not None, "testing.tick runs as a schedule's run"
    seconds, micros = job.connection.time()
    job.connection.rpush(f"diag:{key}", f"{due.timestamp():.3f} {seconds + micros / 1e6:.3f}")

"""Tasks used only by the tests (loaded through TASK_MODULES in test apps and processes)."""

from __future__ import annotations

import json
import os
import time

from rq import get_current_job

from service.jobs.context import scheduled_for
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
    """Sleep `seconds` while `label` shows in the worker's current call (the dashboard tests' running job)."""
    time.sleep(seconds)
    return label


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

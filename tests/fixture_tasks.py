"""Tasks used only by the tests (loaded through TASK_MODULES in test apps and processes)."""

from __future__ import annotations

import time

from rq import get_current_job

from service.task_registry import task


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

"""Tasks the parity tests run twice: through stock RQ by import path, through the service by task name."""

from __future__ import annotations

import time

from rq import Retry, get_current_job

from service.tasks.registry import task

# How long a held job waits for its release before it gives up (a test that
# fails must not leave a worker busy for long).
HOLD_SECONDS = 60


@task("parity.ok")
def ok(x: int) -> dict[str, int]:
    """Return {"x": x}."""
    return {"x": x}


@task("parity.fail")
def fail(x: int) -> None:
    """Raise ValueError naming x."""
    raise ValueError(f"bad {x}")


@task("parity.slow")
def slow(seconds: float) -> float:
    """Sleep `seconds` (the timeout scenario stops it earlier)."""
    time.sleep(seconds)
    return seconds


@task("parity.ask_retry")
def ask_retry() -> Retry:
    """Return RQ's Retry: the job asks to run again."""
    return Retry(max=1)


@task("parity.forever", result_ttl=-1)
def forever(x: int) -> int:
    """Return x; its result is kept forever (the API accepts no negative result_ttl)."""
    return x


@task("parity.hold")
def hold(key: str) -> str:
    """Block until the test pushes to `key` (the job is running meanwhile), then return 'released'."""
    job = get_current_job()
    assert job is not None
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:  # short waits: the worker's client times out a long one
        if job.connection.blpop([key], timeout=1):
            return "released"
    return "never released"

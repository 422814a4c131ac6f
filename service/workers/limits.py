"""Limits: per-task concurrency (at most K running) and start rate (at most N starts per period).

Enforced in Redis by one Lua call when a worker is about to start a job of a
limited task, so the limits hold across every worker on every machine. A job
over a limit is not run and does not block its worker: it goes into its
lane's waiting set (service.workers.claim, parked there by the worker) until the time a slot is likely free,
then back to the front of its lane (Sidekiq Enterprise's approach).

RQ 3.0's own `RateLimit` was evaluated and not used: it is a concurrency cap
applied at enqueue time (so every producer must pass it, and jobs written by
the scheduler or by hand escape it), it refuses `unique` jobs, counts queued
jobs as holding a slot, and has no starts-per-period limit.
"""

from __future__ import annotations

import random

from redis import Redis

from service.core.keys import limit_running_key as running_key
from service.core.keys import limit_starts_key
from service.core.lua import script
from service.tasks.registry import TaskSpec

ACQUIRE = script("acquire_limits")
# A slot is held at most this long past the job's timeout if its worker
# vanished without the reaper noticing (a backstop; the reaper frees it first).
SLOT_GRACE_SECONDS = 120
# How long a job over its concurrency limit waits before it is tried again.
CONCURRENCY_RETRY_SECONDS = 0.5


def is_limited(spec: TaskSpec) -> bool:
    return bool(spec.concurrency or spec.rate_limit)


class Limiter:
    """Acquires and releases per-task slots for one worker process."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection

    def acquire(self, spec: TaskSpec, job_id: str, timeout_seconds: float) -> float:
        """Return 0 if job `job_id` may start now (slot taken), else seconds to wait before trying again."""
        max_starts, period = spec.rate_limit or (0, 0.0)
        wait = float(
            ACQUIRE(
                keys=[running_key(spec.name), limit_starts_key(spec.name)],
                args=[job_id, spec.concurrency or 0, timeout_seconds + SLOT_GRACE_SECONDS, max_starts, period],
                client=self.connection,
            )
        )
        if wait < 0:
            return CONCURRENCY_RETRY_SECONDS * random.uniform(0.5, 1.5)
        return wait


def release(pipeline: object, spec: TaskSpec | None, job_id: str) -> None:
    """Queue the release of `job_id`'s concurrency slot on `pipeline` (no-op for unlimited tasks)."""
    if spec is not None and spec.concurrency:
        pipeline.zrem(running_key(spec.name), job_id)  # type: ignore[attr-defined]

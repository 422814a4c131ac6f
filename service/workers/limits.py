"""Limits: per-task concurrency (at most K running), per-group concurrency and start rate (N per period).

Enforced in Redis by one Lua call when a worker is about to start a job of a
limited task, so the limits hold across every worker on every machine. A job
over a limit is not run and does not block its worker: it goes into its
lane's waiting set (service.workers.claim, parked there by the worker) until the time a slot is likely free,
then back to the front of its lane (Sidekiq Enterprise's approach). A job held
back by its group's cap (`@task(group_concurrency=N)`) also marks its group
held in its lane for that time, so the group passes its turns instead of
handing out jobs that would only be held back too.

RQ 3.0's own `RateLimit` was evaluated and not used: it is a concurrency cap
applied at enqueue time (so every producer must pass it, and jobs written by
the scheduler or by hand escape it), it refuses `unique` jobs, counts queued
jobs as holding a slot, and has no starts-per-period limit.
"""

from __future__ import annotations

import random
from typing import Any

from redis import Redis

from service.core.keys import held_groups_key, limit_group_key, limit_starts_key
from service.core.keys import limit_running_key as running_key
from service.core.lua import script
from service.tasks.registry import TaskSpec

ACQUIRE = script("acquire_limits")
# A slot is held at most this long past the job's timeout if its worker
# vanished without the reaper noticing (a backstop; the reaper frees it first).
SLOT_GRACE_SECONDS = 120
# How long a job over its concurrency limit waits before it is tried again.
CONCURRENCY_RETRY_SECONDS = 0.5
# A key no job's slot is ever in: the slot key of a job without that limit.
NO_SLOT = running_key("-")


def is_limited(spec: TaskSpec, group: str | None = None) -> bool:
    return bool(spec.concurrency or spec.rate_limit or (group and spec.group_concurrency))


def group_slot_key(spec: TaskSpec | None, group: str | None) -> str:
    """The running zset of `spec`'s jobs in `group` when the task caps its groups, else NO_SLOT."""
    if spec is None or not group or not spec.group_concurrency:
        return NO_SLOT
    return limit_group_key(spec.name, group)


class Limiter:
    """Acquires and releases per-task slots for one worker process."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection

    def acquire(
        self, spec: TaskSpec, job_id: str, timeout_seconds: float, group: str | None = None
    ) -> tuple[float, bool]:
        """Return (0, False) if job `job_id` may start now (slots taken), else (seconds to wait before trying
        again, whether its group's cap is the limit)."""
        max_starts, period = spec.rate_limit or (0, 0.0)
        group_cap = spec.group_concurrency if group else None
        wait = float(
            ACQUIRE(
                keys=[running_key(spec.name), limit_starts_key(spec.name), group_slot_key(spec, group)],
                args=[
                    job_id,
                    spec.concurrency or 0,
                    timeout_seconds + SLOT_GRACE_SECONDS,
                    max_starts,
                    period,
                    group_cap or 0,
                ],
                client=self.connection,
            )  # fmt: skip
        )
        if wait < 0:
            return CONCURRENCY_RETRY_SECONDS * random.uniform(0.5, 1.5), wait == -2
        return wait, False


def release(pipeline: Any, spec: TaskSpec | None, job_id: str, group: str | None = None, lane: str = "") -> None:
    """Queue the release of `job_id`'s slots on `pipeline` (no-op for unlimited tasks); its group is no longer held."""
    if spec is not None and spec.concurrency:
        pipeline.zrem(running_key(spec.name), job_id)
    group_key = group_slot_key(spec, group)
    if group_key != NO_SLOT:
        pipeline.zrem(group_key, job_id)
        if lane:
            pipeline.hdel(held_groups_key(lane), group)

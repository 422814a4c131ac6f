"""Keys: the Redis key names the service adds beside RQ's own, in one place.

RQ's key names come from RQ's own classes (service.core.compat names them);
the service's keys all start with `svc:`.
"""

from __future__ import annotations

CLAIMED_KEY = "svc:claimed:{worker}"
CLAIMERS_KEY = "svc:claimers"
DOORBELL_KEY = "svc:doorbell:{lane}"
WAITING_KEY = "svc:waiting:{lane}"


def claimed_key(worker_name: str) -> str:
    """The in-progress list of worker `worker_name`."""
    return CLAIMED_KEY.format(worker=worker_name)


def doorbell_key(lane: str) -> str:
    """The wake-up list of `lane`: one token per push, consumed by claims."""
    return DOORBELL_KEY.format(lane=lane)


def waiting_key(lane: str) -> str:
    """The sorted set of `lane` jobs held back by a limit until their score (epoch seconds)."""
    return WAITING_KEY.format(lane=lane)


class ScheduleKeys:
    """Key shapes of the schedule store, in one place (the Lua scripts receive them as arguments)."""

    prefix = "svc:schedule:"
    index = "svc:schedules"
    # rq-scheduler's own ZSET is `rq:scheduler:scheduled_jobs`; schedules sit
    # beside it, not in it: stock Scheduler.get_jobs() deletes every member
    # that is not an RQ job hash, and a schedule is not one.
    due = "rq:scheduler:scheduled_jobs:schedules"
    buffered = "svc:schedules:buffered"
    wakeup = "svc:schedules:wakeup"
    # Totals over all schedules for metrics: runs, missed, skipped, dropped,
    # coalesced, and a lag histogram (lag_ms_bucket_<upper bound>, _sum, _count).
    stats = "svc:schedules:stats"

    @classmethod
    def schedule(cls, schedule_id: str) -> str:
        return cls.prefix + schedule_id

    @classmethod
    def runs(cls, schedule_id: str) -> str:
        return cls.prefix + schedule_id + ":runs"


# The audit log: a stream capped with XADD MAXLEN ~ (service.ops.audit).
AUDIT_KEY = "svc:audit"

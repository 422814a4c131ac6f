"""Job callbacks: the only callbacks a worker runs, looked up by the name stored in the job hash.

RQ imports whatever dotted path a job hash names as its success, failure or
stopped callback. Here a stored name is only a key into CALLBACKS: a name
that is not listed is never imported (the worker fails such a job instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis import Redis

from service.core.keys import ScheduleKeys
from service.core.lua import script

PAUSE = script("pause_schedule")

# The failure callback of runs whose schedule has pause_on_failure. The name
# is stored in run jobs' hashes, so it keeps the module path of the first release.
PAUSE_ON_FAILURE = "service.schedule_runs.on_run_failed"


def pause_schedule(connection: Redis, schedule_id: str, note: str) -> bool:
    """Pause schedule `schedule_id` with `note`; False when it does not exist."""
    keys = [ScheduleKeys.schedule(schedule_id), ScheduleKeys.due]
    return bool(PAUSE(keys=keys, args=[schedule_id, note, ScheduleKeys.wakeup], client=connection))


def pause_on_failure(job: Any, connection: Redis, *exc_info: Any) -> None:
    """Pause the schedule of a run that failed for good (its retries spent)."""
    if job.should_retry:
        return
    schedule_id = (job.meta or {}).get("schedule_id")
    if not isinstance(schedule_id, str) or not schedule_id:
        return
    error = str(exc_info[1])[:200] if len(exc_info) > 1 else "failed"
    pause_schedule(connection, schedule_id, f"paused: run {job.id} failed: {error}")


CALLBACKS: dict[str, Callable[..., Any]] = {PAUSE_ON_FAILURE: pause_on_failure}


class UnknownCallback(Exception):
    """Raised when a job hash names a callback that is not one of the service's own."""


def resolve(name: str | None) -> Callable[..., Any] | None:
    """The callback stored as `name` (None for none); UnknownCallback for a name not in CALLBACKS."""
    if not name:
        return None
    try:
        return CALLBACKS[name]
    except KeyError:
        raise UnknownCallback(f"callback {name[:100]!r} is not one of the service's callbacks; not run") from None

"""Task context: what a running task can ask about its own job, and the progress it reports."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from rq import get_current_job

from service.core.lua import script

log = logging.getLogger(__name__)

PROGRESS = script("progress")
# The largest progress value, as compact JSON: a dashboard line, not a result channel.
PROGRESS_MAX_BYTES = 4096


def scheduled_for(job: Any = None) -> datetime | None:
    """Return the logical due time of the running scheduled job (or `job`), aware UTC; None if not a run."""
    job = job or get_current_job()
    value = (job.meta or {}).get("scheduled_for") if job is not None else None
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def progress(value: Any) -> bool:
    """Store `value` (any JSON, at most 4 KiB encoded) as the running job's latest progress; it reads `progress`.

    One call to Redis on the job's own client and no read, so a task may report every second. Best
    effort: when Redis cannot take it the task goes on (False, logged). Outside a job it does nothing
    (False). A value that is not JSON (TypeError) or is too large (ValueError) raises.
    """
    job = get_current_job()
    if job is None:
        return False
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > PROGRESS_MAX_BYTES:
        raise ValueError(f"progress: {len(text.encode())} bytes of JSON; at most {PROGRESS_MAX_BYTES}")
    try:
        return bool(PROGRESS(keys=[job.key], args=[text], client=job.connection))
    except RedisError as exc:
        log.warning("job %s: progress not stored: Redis unavailable (%s)", job.id, type(exc).__name__)
        return False

"""Task context: what a running task can ask about its own job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rq import get_current_job


def scheduled_for(job: Any = None) -> datetime | None:
    """Return the logical due time of the running scheduled job (or `job`), aware UTC; None if not a run."""
    job = job or get_current_job()
    value = (job.meta or {}).get("scheduled_for") if job is not None else None
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

"""Logging: text or JSON lines on stdout, tagged with the process role."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from service.core.config import Settings

# Attributes a LogRecord always has; anything else was passed with extra=... .
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, role, logger, message and any extra fields."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "role": self.role,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class JobContext(logging.Filter):
    """Add job_id, task and queue to every record logged while a job runs in this process."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            job = current_job()
            if job is not None:
                record.job_id = job.id
                record.task = job.func_name
                record.queue = job.origin
        return True


def current_job() -> Any:
    try:
        from rq import get_current_job

        return get_current_job()
    except Exception:  # outside a worker, or the job cannot be read: no context
        return None


def configure_logging(settings: Settings, *, role: str) -> None:
    """Send every log record to stdout in the configured format and level."""
    handler = logging.StreamHandler(sys.stdout)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(JobContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)

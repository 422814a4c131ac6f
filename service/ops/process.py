"""Process start-up shared by worker.py and scheduler.py: settings, logs, tasks, Redis."""

from __future__ import annotations

import sys

from redis import Redis

from service.core import compat
from service.core.config import Settings
from service.core.connection import connect
from service.core.errors import ConfigError
from service.core.logs import configure_logging
from service.tasks import outbound
from service.tasks.registry import load_task_modules


def start(role: str) -> tuple[Settings, Redis]:
    """Return settings and the process's Redis client; exit 2 with one line on bad configuration."""
    try:
        settings = Settings.from_env(role=role)
        load_task_modules(settings.task_modules)
    except ConfigError as exc:
        print(f"{role}: configuration error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings, role=role)
    compat.check_versions()  # warns, never refuses: an unchecked release may still work
    outbound.allow(settings.outbound_allow)
    return settings, connect(settings.redis_url, role=role)

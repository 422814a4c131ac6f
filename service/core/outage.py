"""Outage: back off while Redis is unreachable, and log once per state change, not once per retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Errors that mean "Redis is not answering right now" (BusyLoadingError, while
# Redis loads its AOF after a restart, is a ConnectionError).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 5.0


class Outage:
    """Tracks whether Redis is reachable for one loop of one process, with exponential backoff."""

    def __init__(self, log: logging.Logger, what: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.log = log
        self.what = what
        self.sleep = sleep  # how to wait out a backoff (a scheduler's wait returns early on a stop signal)
        self.down_since: float | None = None
        self.delay = FIRST_DELAY_SECONDS

    def down(self, exc: BaseException) -> None:
        """Note a failed Redis call, log it if Redis was up, and sleep the current backoff."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.log.error("%s: Redis unavailable (%s: %s); retrying with backoff", self.what, type(exc).__name__, exc)
        self.sleep(self.delay)
        self.delay = min(self.delay * 2, MAX_DELAY_SECONDS)

    def up(self) -> None:
        """Note a successful Redis call; log the recovery if Redis was down."""
        if self.down_since is not None:
            self.log.warning("%s: Redis is back after %.1f s", self.what, time.monotonic() - self.down_since)
            self.down_since = None
            self.delay = FIRST_DELAY_SECONDS

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

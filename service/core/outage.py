"""Outage: back off while Redis is unreachable, and log once per state change, not once per retry.

Every loop that must ride out a Redis outage uses it: `retry()` runs one step
until Redis answers (a worker's or scheduler's start-up, storing a job's
outcome, syncing declared schedules); a loop of its own (the worker's claim
loop, the heartbeat) calls `down()` and `up()` around each turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Errors that mean "Redis is not answering right now" (BusyLoadingError, while
# Redis loads its AOF after a restart, is a ConnectionError).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 5.0
T = TypeVar("T")


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

    def retry(self, step: Callable[[], T], stop: Callable[[], bool] = lambda: False) -> T:
        """Run `step` until it gets through to Redis and return its result, backing off meanwhile.

        When `stop()` is true after a failed attempt, the error is raised instead of retried.
        """
        while True:
            try:
                result = step()
            except REDIS_DOWN as exc:
                if stop():
                    raise
                self.down(exc)
                continue
            self.up()
            return result

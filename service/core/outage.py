"""Outage: back off while Redis is unreachable, and log once per state change, not once per retry.

Every loop that must ride out a Redis outage uses it: `retry()` runs one step
until Redis answers (a worker's or scheduler's start-up, storing a job's
outcome, syncing declared schedules); a loop of its own (the worker's claim
loop, the heartbeat) calls `down()` and `up()` around each turn.

A Redis that answers but refuses writes is told apart by `write_refused()`:
full (`maxmemory` reached under `noeviction`) or unable to persist (MISCONF).
Reads still work then, and the refused command (a whole script or MULTI)
wrote nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Errors that mean "Redis is not answering right now" (BusyLoadingError, while
# Redis loads its AOF after a restart, is a ConnectionError).
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
# A MISCONF reply, bare, inside a script's error, or in redis-py's note on a pipeline's command.
MISCONF = re.compile(r"(?:^|-|caused error: )MISCONF ")
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
        self.refused: str | None = None  # why Redis refused writes (write_refused), when that was the trouble
        self.delay = FIRST_DELAY_SECONDS

    def down(self, exc: BaseException) -> None:
        """Note a failed Redis call, log it if Redis was up, and sleep the current backoff."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.refused = write_refused(exc)
            state = f"refuses writes ({self.refused})" if self.refused else "unavailable"
            self.log.error("%s: Redis %s: %s: %s; retrying with backoff", self.what, state, type(exc).__name__, exc)
        self.sleep(self.delay)
        self.delay = min(self.delay * 2, MAX_DELAY_SECONDS)

    def up(self) -> None:
        """Note a successful Redis call; log the recovery if Redis was down."""
        if self.down_since is not None:
            state = "accepts writes again" if self.refused else "is back"
            self.log.warning("%s: Redis %s after %.1f s", self.what, state, time.monotonic() - self.down_since)
            self.down_since = None
            self.delay = FIRST_DELAY_SECONDS

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def retry(self, step: Callable[[], T], stop: Callable[[], bool] = lambda: False, *, while_full: bool = False) -> T:
        """Run `step` until it gets through to Redis and return its result, backing off meanwhile.

        `while_full`: a write Redis refuses (write_refused) is retried too. When `stop()`
        is true after a failed attempt, the error is raised instead of retried.
        """
        while True:
            try:
                result = step()
            except RedisError as exc:
                if stop() or not (isinstance(exc, REDIS_DOWN) or (while_full and write_refused(exc))):
                    raise
                self.down(exc)
                continue
            self.up()
            return result


def write_refused(exc: BaseException) -> str | None:
    """Why Redis refused a write: "maxmemory" (full, noeviction) or "misconf" (cannot persist); else None.

    Matched on the reply's prefix wherever it appears: Redis 6.2 wraps a
    script's refusal in "ERR Error running script ... -OOM ...", redis-py a
    pipeline's in "Command # 1 (...) of pipeline caused error: MISCONF ...".
    """
    if not isinstance(exc, RedisError):
        return None
    text = str(exc)
    if isinstance(exc, OutOfMemoryError) or "OOM command not allowed" in text:
        return "maxmemory"
    if MISCONF.search(text):
        return "misconf"
    return None

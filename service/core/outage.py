"""Outage: back off while Redis is unreachable, and log once per state change, not once per retry.

Every loop that must ride out a Redis outage uses it: `retry()` runs one step
until Redis answers (a worker's or scheduler's start-up, storing a job's
outcome, syncing declared schedules); a loop of its own (the worker's claim
loop, the heartbeat) calls `down()` and `up()` around each turn.

A Redis that answers but refuses writes is an outage too, told apart by
`write_refused()`: full (`maxmemory` reached under `noeviction`: OOM) or
unable to persist (MISCONF after a failed save). Reads still work then. Its
refusals arrive as plain ResponseErrors (inside a script or a pipeline
redis-py cannot tell them apart by class), so the reply's text is read.
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
# The refusals' replies on Redis 6.2, 7 and Valkey: bare, inside a script's error ("-OOM"), or in
# redis-py's note on a pipeline's command ("caused error: MISCONF"); redis-py drops a plain "OOM ".
OOM = re.compile(r"(?:^|[\s-])OOM\b|command not allowed when used memory")
MISCONF = re.compile(r"(?:^|-|caused error: )MISCONF ")
FIRST_DELAY_SECONDS = 0.25
MAX_DELAY_SECONDS = 5.0
T = TypeVar("T")


class RedisRefusesWrites(RedisConnectionError):
    """Raised by Outage.retry, when told to stop, for a step Redis refused to write (full, or MISCONF).

    A ConnectionError, so every `except REDIS_DOWN` treats it as the outage it is.
    """


def write_refused(exc: BaseException) -> str | None:
    """Why Redis refused a write: "maxmemory" (full, noeviction) or "misconf" (cannot persist); else None."""
    if not isinstance(exc, RedisError):
        return None
    text = str(exc)
    if isinstance(exc, OutOfMemoryError) or OOM.search(text):
        return "maxmemory"
    if MISCONF.search(text):
        return "misconf"
    return None


def refuses_writes(exc: BaseException) -> bool:
    """True when `exc` is Redis refusing a write: out of memory (noeviction) or MISCONF (a failed save)."""
    return write_refused(exc) is not None


def unavailable(exc: BaseException) -> bool:
    """True when `exc` means Redis cannot serve us right now: unreachable, frozen, or refusing writes."""
    return isinstance(exc, REDIS_DOWN) or refuses_writes(exc)


class Outage:
    """Tracks whether Redis is reachable for one loop of one process, with exponential backoff."""

    def __init__(self, log: logging.Logger, what: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.log = log
        self.what = what
        self.sleep = sleep  # how to wait out a backoff (a scheduler's wait returns early on a stop signal)
        self.down_since: float | None = None
        self.delay = FIRST_DELAY_SECONDS
        self.state = ""  # "", or what is wrong: "unavailable" or "refuses writes"

    def down(self, exc: BaseException, wait: bool = True) -> None:
        """Note a failed Redis call, log it if the state changed, and (`wait`) sleep the current backoff."""
        state = "refuses writes" if refuses_writes(exc) else "unavailable"
        if self.down_since is None:
            self.down_since = time.monotonic()
        if state != self.state:
            self.state = state
            reason = str(exc).splitlines()[0][:300] if str(exc) else ""
            self.log.error("%s: Redis %s (%s: %s); retrying with backoff", self.what, state, type(exc).__name__, reason)
        if wait:
            self.sleep(self.delay)
            self.delay = min(self.delay * 2, MAX_DELAY_SECONDS)

    def up(self) -> None:
        """Note a successful Redis call; log the recovery if Redis was down or refusing writes."""
        if self.down_since is not None:
            back = "is back" if self.state == "unavailable" else "accepts writes again"
            self.log.warning("%s: Redis %s after %.1f s", self.what, back, time.monotonic() - self.down_since)
            self.down_since = None
            self.state = ""
            self.delay = FIRST_DELAY_SECONDS

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def retry(self, step: Callable[[], T], stop: Callable[[], bool] = lambda: False) -> T:
        """Run `step` until it gets through to Redis and return its result, backing off meanwhile.

        A refused write is retried too (it changed nothing: Redis refuses a script at its first
        write, and a transaction whole). When `stop()` is true after a failed attempt, the error is
        raised instead of retried (a refused write as RedisRefusesWrites).
        """
        while True:
            try:
                result = step()
            except RedisError as exc:
                if not unavailable(exc):
                    raise
                if stop():
                    if isinstance(exc, REDIS_DOWN):
                        raise
                    raise RedisRefusesWrites(str(exc)) from exc
                self.down(exc)
                continue
            self.up()
            return result

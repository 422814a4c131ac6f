"""Clock: Redis's clock (TIME), the one clock every process agrees on, whatever its host's says.

Host clocks drift and jump (a resumed VM, broken NTP, a laptop's
container); every decision that compares times across processes (a due
time, a delayed job's start, a ttl, a rate window, an execution's expiry, a
lease) uses Redis's instead. Scripts that decide read `TIME` themselves.
In Python two readers share one process-wide offset (Redis's clock minus the
host's):

- `now()`, `utcnow()`, `timestamp()` read it without a round trip; a worker
  learns it from replies it waits for anyway (the work script's claim answers its
  `TIME`, the heartbeat's pipeline asks for it). Until learnt, it is zero.
- `ServerClock` (the scheduler's loop) asks Redis at most once per
  `resync_seconds` and carries the answer forward with the monotonic clock,
  so a jump of the host's wall clock between readings never moves it; each
  reading also teaches the offset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_offset = 0.0  # Redis's clock minus this host's, in seconds
# A reading that differs from the known offset by less than this (plus its round trip) is noise.
MAX_DRIFT_SECONDS = 0.001


def now() -> float:
    """Seconds since the epoch on Redis's clock (the host's until an offset is learnt)."""
    return time.time() + _offset


def utcnow() -> datetime:
    """now() as an aware UTC datetime (RQ's `rq.utils.now`)."""
    return datetime.fromtimestamp(time.time() + _offset, UTC)


def timestamp() -> int:
    """now() in whole seconds (RQ's `rq.utils.current_timestamp`)."""
    return int(time.time() + _offset)


def offset() -> float:
    return _offset


def set_offset(seconds: float) -> None:
    """Take an offset learnt elsewhere (a fork-mode horse gets its worker's)."""
    global _offset
    _offset = seconds


def server_seconds(reply: Sequence[Any]) -> float:
    """A `TIME` reply ([seconds, microseconds]) as epoch seconds."""
    return int(reply[0]) + int(reply[1]) / 1e6


def learn(server: float, sent_at: float) -> None:
    """Learn the offset from `server` (epoch s), read by Redis between `sent_at` (host time) and now.

    A reading within the round trip's uncertainty of the offset already known
    changes nothing: the clock does not jitter back and forth between
    readings (a start stamped after an end).
    """
    received_at = time.time()
    offset = server - (sent_at + received_at) / 2
    if abs(offset - _offset) > (received_at - sent_at) / 2 + MAX_DRIFT_SECONDS:
        set_offset(offset)


def sync(connection: Any) -> float:
    """Ask Redis for its time (one round trip) and learn the offset; return Redis's time."""
    sent_at = time.time()
    server = server_seconds(connection.time())
    learn(server, sent_at)
    return server


def server_time_us(connection: Redis) -> int:
    """Return Redis's clock (TIME) in microseconds since the epoch: one round trip."""
    seconds, micros = connection.time()
    return int(seconds) * 1_000_000 + int(micros)


def server_now(connection: Redis) -> datetime:
    """Return Redis's clock as an aware UTC datetime: one round trip."""
    return EPOCH + timedelta(microseconds=server_time_us(connection))


class ServerClock:
    """Redis's time as an aware UTC datetime; re-read from Redis at most every `resync_seconds`.

    Between readings it adds the monotonic time elapsed since the last one.
    The reading is taken after TIME's reply arrives, so the estimate trails
    Redis by at most one round trip: it may be late by that, never early.
    A re-read that fails raises the Redis error (the caller's outage path).
    """

    def __init__(self, connection: Redis, resync_seconds: float = 1.0) -> None:
        self.connection = connection
        self.resync_seconds = resync_seconds
        self._offset_us: int | None = None  # Redis's time minus the monotonic clock, in µs
        self._synced_us = 0  # the monotonic clock at the last reading, in µs

    def sync(self) -> datetime:
        """Read Redis's clock now (teaching the process-wide offset too) and return it."""
        sent_at = time.time()
        server_us = server_time_us(self.connection)
        learn(server_us / 1e6, sent_at)
        local_us = time.monotonic_ns() // 1000
        self._offset_us, self._synced_us = server_us - local_us, local_us
        return EPOCH + timedelta(microseconds=server_us)

    def __call__(self) -> datetime:
        local_us = time.monotonic_ns() // 1000
        if self._offset_us is None or local_us - self._synced_us >= self.resync_seconds * 1_000_000:
            return self.sync()
        return EPOCH + timedelta(microseconds=local_us + self._offset_us)

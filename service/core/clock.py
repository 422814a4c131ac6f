"""Clock: Redis's clock (TIME), the one clock every process agrees on, whatever its host's says.

Host clocks drift and jump (a resumed VM, broken NTP, a laptop's
container); every decision that compares times across processes uses
Redis's instead. `server_now()` asks Redis once. `ServerClock` asks it at
most once per `resync_seconds` and carries the answer forward with the
monotonic clock in between, so a loop reads the shared time without a round
trip per call; a jump of the host's wall clock never moves it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from redis import Redis

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
        """Read Redis's clock now and return it."""
        server_us = server_time_us(self.connection)
        local_us = time.monotonic_ns() // 1000
        self._offset_us, self._synced_us = server_us - local_us, local_us
        return EPOCH + timedelta(microseconds=server_us)

    def __call__(self) -> datetime:
        local_us = time.monotonic_ns() // 1000
        if self._offset_us is None or local_us - self._synced_us >= self.resync_seconds * 1_000_000:
            return self.sync()
        return EPOCH + timedelta(microseconds=local_us + self._offset_us)

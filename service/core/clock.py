"""Clock: Redis's clock, the one every process shares, for every time compared across processes.

Host clocks drift and jump (a resumed VM, a broken NTP, a laptop's
container). A time written by one process and judged by another (a delayed
job's start, a ttl, a rate window, an execution's expiry) is therefore
read from Redis's `TIME`. Scripts that decide read `TIME` themselves; in
Python a process keeps the offset between Redis's clock and its own, learnt
from a server time that comes back with a reply it waits for anyway (the
claim script answers its `TIME`, the heartbeat's pipeline asks for it), so
reading the clock never costs a round trip. Until a process has learnt the
offset, the clock is the host's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

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

"""Gauges: each lane's depth and oldest waiting job's age, and the live workers, read from Redis now.

Read at scrape time for Prometheus (service.ops.metrics) and once a minute
for the dashboard's charts (service.ops.rollup). Plain numbers, no
prometheus-client, so a worker's heartbeat thread can read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from service.core.keys import WORKERS_KEY, job_key, queue_key
from service.core.lanes import LANES


@dataclass(frozen=True)
class Gauges:
    """What `read` found, per lane in LANES order."""

    depth: dict[str, int]
    oldest_age_seconds: dict[str, float]  # 0 for an empty lane
    workers_alive: int


def readable(found: list[Any]) -> list[Any]:
    """A pipeline's replies read with raise_on_error=False, a key of another type (planted) read as empty:
    one such key must not blind the monitoring of every lane (the worker names it in its log)."""
    return [None if isinstance(value, ResponseError) else value for value in found]


def read(connection: Redis) -> Gauges:
    """Queue depth and oldest job age per lane, and registered workers: two pipelined round trips."""
    with connection.pipeline(transaction=False) as pipe:
        for lane in LANES:
            pipe.llen(queue_key(lane))
            pipe.lindex(queue_key(lane), 0)
        pipe.scard(WORKERS_KEY)
        found = readable(pipe.execute(raise_on_error=False))
    depth = {lane: int(found[2 * i] or 0) for i, lane in enumerate(LANES)}
    oldest_ids = {lane: found[2 * i + 1].decode() for i, lane in enumerate(LANES) if found[2 * i + 1]}
    enqueued = oldest_enqueued_at(connection, oldest_ids)
    now = time.time()
    ages = {lane: max(0.0, now - enqueued[lane]) if lane in enqueued else 0.0 for lane in LANES}
    return Gauges(depth, ages, int(found[-1] or 0))


def oldest_enqueued_at(connection: Redis, job_ids: dict[str, str]) -> dict[str, float]:
    """Return the enqueue time (epoch seconds) of each lane's oldest job."""
    if not job_ids:
        return {}
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids.values():
            pipe.hget(job_key(job_id), "enqueued_at")
        stamps = readable(pipe.execute(raise_on_error=False))
    found = {}
    for lane, stamp in zip(job_ids, stamps, strict=True):
        try:
            moment = datetime.fromisoformat(stamp.decode().replace("Z", "+00:00"))
        except (AttributeError, UnicodeDecodeError, ValueError):  # none or not a time: a damaged job's age is unknown
            continue
        found[lane] = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return found

"""The Celery 5 peer of bench/worker_throughput.py: a no-op task on the Redis broker, results ignored.

The task is a no-op except for the first and last few of a throughput batch
(`mark` set): those write their start/end time to one Redis hash, so the
benchmark reads the span from first start to last end (as it reads our jobs'
started_at/ended_at), at the cost of ~100 HSETs per batch. A latency probe
writes its start time the same way.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from redis import Redis

BROKER_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TIMES_KEY = "bench:celery:times"

app = Celery("bench", broker=BROKER_URL)
app.conf.update(
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
)
_redis: Redis | None = None


def _client() -> Redis:
    global _redis
    if _redis is None:
        _redis = Redis.from_url(BROKER_URL)
    return _redis


@app.task(name="bench.noop")
def noop(mark: str | None = None) -> None:
    """Do nothing (a marked task records when it started and ended)."""
    if mark is None:
        return
    started = time.time()
    _client().hset(TIMES_KEY, mapping={f"{mark}:start": started, f"{mark}:end": time.time()})

"""Metric counters: the names, labels and buckets of the service's metrics, and how they are counted.

Counters live in one Redis hash, so they add up across any number of web,
worker and scheduler processes on any number of hosts, survive restarts of
those processes, and cost one HINCRBY inside a pipeline the caller already
sends (no extra round trip). service.ops.metrics renders them for Prometheus.
"""

from __future__ import annotations

from typing import Any

from service.core.keys import METRICS_KEY

SEP = "|"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# The scheduler's firing script keeps its own totals (keys.ScheduleKeys.stats): one
# observation per lag bucket in milliseconds, turned into a cumulative histogram here.
LAG_BUCKETS_MS = (10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# name -> (help, label names)
COUNTERS = {
    "jobs_enqueued": ("Jobs enqueued, by task and lane.", ("task", "queue")),
    "jobs_started": ("Job executions started, by task and lane.", ("task", "queue")),
    "jobs_finished": ("Jobs that finished successfully, by task and lane.", ("task", "queue")),
    "jobs_failed": ("Jobs that failed for good (no retry left), by task and lane.", ("task", "queue")),
    "jobs_retried": ("Failed executions that were scheduled for a retry, by task and lane.", ("task", "queue")),
    "jobs_redelivered": ("Jobs put back after their worker died or shut down, by task and lane.", ("task", "queue")),
    "jobs_discarded": ("Claimed ids that no job can have (a bad id planted in a lane), removed, by lane.", ("queue",)),
}
HISTOGRAMS = {
    "job_duration_seconds": ("Job execution time, by task and lane.", ("task", "queue"), DURATION_BUCKETS),
    # Counted by the worker path when a job starts; the dashboard's charts read its p50 and p95 per lane.
    "job_wait_seconds": ("Time from enqueue to start, by lane.", ("queue",), DURATION_BUCKETS),
}


def field(name: str, *labels: str) -> str:
    return SEP.join((name, *labels))


def count(pipe: Any, name: str, *labels: str, amount: int = 1) -> None:
    """Add `amount` to counter `name` with `labels`, inside the caller's pipeline."""
    pipe.hincrby(METRICS_KEY, field(name, *labels), amount)


def observe(pipe: Any, name: str, value: float, *labels: str) -> None:
    """Record `value` in histogram `name` (one HINCRBY per bucket it falls in, sum and count)."""
    buckets = HISTOGRAMS[name][2]
    for bound in buckets:
        if value <= bound:
            pipe.hincrby(METRICS_KEY, field(name, *labels, f"le={bound}"), 1)
    pipe.hincrbyfloat(METRICS_KEY, field(name, *labels, "sum"), value)
    pipe.hincrby(METRICS_KEY, field(name, *labels, "count"), 1)

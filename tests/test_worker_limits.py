"""Per-task limits hold across workers: concurrency K=2 over 3 workers, and a start rate."""

from __future__ import annotations

import json

from redis import Redis

from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import enqueue_many, recorded, start_worker


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_concurrency_limit_of_two_holds_across_three_workers(connection: Redis, processes: Processes) -> None:
    jobs = 12
    enqueue_many(connection, "workertest.limited", [("default", ("spans", 0.3))] * jobs)
    enqueue_many(connection, "diag.record", [("default", ("other", i)) for i in range(20)])
    for i in range(3):
        start_worker(processes, name=f"w{i}")
    wait_until(lambda: len(recorded(connection, "spans")) == jobs, timeout=60, what="every limited job")
    spans = [tuple(json.loads(v)) for v in recorded(connection, "spans")]
    assert max_overlap(spans) == 2  # never 3, and the limit was reached
    # Held-back jobs never blocked the other task's jobs.
    assert len(recorded(connection, "other")) == 20
    assert connection.zcard("svc:limit:workertest.limited:running") == 0


def test_rate_limit_holds_within_one_job_of_its_bound(connection: Redis, processes: Processes) -> None:
    jobs = 14  # workertest.rated allows 4 starts per second
    enqueue_many(connection, "workertest.rated", [("default", ("starts",))] * jobs)
    for i in range(3):
        start_worker(processes, name=f"w{i}")
    wait_until(lambda: len(recorded(connection, "starts")) == jobs, timeout=60, what="every rated job")
    starts = sorted(float(v) for v in recorded(connection, "starts"))
    worst = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert 4 <= worst <= 5
    assert starts[-1] - starts[0] >= 2.0  # 14 starts at 4/s need more than 2 s

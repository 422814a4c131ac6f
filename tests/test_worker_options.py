"""worker.py options: --pool runs several workers; --max-jobs and --max-memory-mb restart a worker in place."""

from __future__ import annotations

import signal

from redis import Redis

from service.core import metrics
from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import enqueue_many, recorded, start_worker


def test_max_jobs_restarts_the_worker_in_place_and_it_carries_on(connection: Redis, processes: Processes) -> None:
    worker = start_worker(processes, "--max-jobs", "3")
    enqueue_many(connection, "diag.record", [("default", ("runs", i)) for i in range(8)])
    wait_until(lambda: len(recorded(connection, "runs")) == 8, timeout=60, what="every job")
    assert worker.output().count("restarting (ran 3 jobs (--max-jobs))") >= 2
    assert worker.alive()  # exec'd in place: the process manager sees no exit


def test_memory_ceiling_restarts_the_worker_after_a_job(connection: Redis, processes: Processes) -> None:
    worker = start_worker(processes, "--max-memory-mb", "1")
    enqueue_many(connection, "diag.record", [("default", ("mem", i)) for i in range(2)])
    wait_until(lambda: len(recorded(connection, "mem")) == 2, timeout=60, what="both jobs")
    assert "over --max-memory-mb 1" in worker.output()
    assert worker.alive()


def test_pool_runs_several_workers_and_stops_them_all_on_sigterm(connection: Redis, processes: Processes) -> None:
    pool = start_worker(processes, "--pool", "2")
    wait_until(lambda: len(connection.keys("svc:alive:*")) == 2, timeout=30, what="two live workers")
    enqueue_many(connection, "diag.record", [("default", ("pool", i)) for i in range(50)])
    wait_until(lambda: len(recorded(connection, "pool")) == 50, timeout=60, what="every job")
    pool.signal(signal.SIGTERM, group=True)
    assert pool.wait(timeout=30) == 0
    wait_until(lambda: connection.keys("svc:alive:*") == [], timeout=10, what="the workers to leave")


def test_fork_mode_stores_what_the_horse_returned(connection: Redis, processes: Processes) -> None:
    jobs = enqueue_many(connection, "diag.echo", [("default", (i, "x")) for i in range(5)])
    start_worker(processes, "--fork")
    wait_until(lambda: all(j.get_status(refresh=True) == "finished" for j in jobs), timeout=60, what="every job")
    assert [j.latest_result().return_value for j in jobs] == [{"args": [i, "x"], "kwargs": {}} for i in range(5)]
    assert all(connection.hget(j.key, "attempts") == b"1" for j in jobs)
    assert connection.zcard("rq:wip:default") == 0


def test_outcomes_are_counted_in_the_metrics(connection: Redis, processes: Processes) -> None:
    ok = enqueue_many(connection, "diag.echo", [("high", (i,)) for i in range(3)])
    bad = enqueue_many(connection, "diag.fail", [("low", ())])
    start_worker(processes)
    wait_until(lambda: all(j.get_status(refresh=True) in ("finished", "failed") for j in ok + bad), timeout=30)
    counts = {k.decode(): v.decode() for k, v in connection.hgetall("svc:metrics").items()}
    assert counts["jobs_finished|diag.echo|high"] == "3"
    assert counts["jobs_started|diag.echo|high"] == "3"
    durations = {
        k.rsplit("|", 1)[1]: float(v) for k, v in counts.items() if k.startswith("job_duration_seconds|diag.echo|high|")
    }
    assert metrics.cumulative(durations, metrics.DURATION_BUCKETS)[1] == 3
    assert counts["jobs_failed|diag.fail|low"] == "1"

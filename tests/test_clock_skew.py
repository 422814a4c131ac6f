"""A worker whose host clock is five minutes off keeps Redis's time: delays, ttls, rate limits, liveness.

Each skewed worker runs under libfaketime (Debian's `faketime`, which
`make test` installs as root): its wall clock is FAKETIME ahead or behind,
Redis's is true. Every task records the host's time next to Redis's, so each
test also checks that the skew was really in force.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import pytest
from redis import Redis
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

import tests.worker_tasks  # noqa: F401 - registers the workertest.* tasks enqueued here
from service.core import keys
from service.jobs.enqueue import InternalRequest, enqueue
from service.jobs.model import ServiceJob
from tests.helpers import wait_until
from tests.processes import ROOT, Processes, ServiceProcess
from tests.worker_fixtures import enqueue as enqueue_raw
from tests.worker_fixtures import enqueue_many, recorded, start_worker, status

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
# `make test` installs faketime as root; CI fails rather than skips.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.matrix,
    pytest.mark.skipif(
        LIBFAKETIME is None and not os.environ.get("CI"),
        reason="libfaketime is not installed (Debian's faketime package; make test installs it as root)",
    ),
]
SKEWS = {"+5m": 300.0, "-5m": -300.0}
# RQ keeps a delayed job's time in whole seconds and its scheduler looks once a second; a skewed clock
# would be off by the whole 300 s. The bound only tells "on time" from "five minutes off".
LATE_BOUND_SECONDS = 15


def start_skewed(processes: Processes, skew: str, name: str = "skewed") -> ServiceProcess:
    """A worker whose wall clock is `skew` off (its monotonic clock is true; see tests/faketime)."""
    assert LIBFAKETIME is not None, "libfaketime is not installed"
    env = {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME": skew,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "PYTHONPATH": f"{ROOT / 'tests' / 'faketime'}:{ROOT}",
    }
    return start_worker(processes, "--name", name, name=name, env=env)


def stamps(connection: Redis, key: str) -> list[tuple[float, float]]:
    """[Redis's time, the worker host's time] of each run recorded in diag:<key>."""
    return [tuple(json.loads(v)) for v in recorded(connection, key)]  # type: ignore[misc]


def assert_skewed(pairs: list[tuple[float, float]], skew: str) -> None:
    for redis_time, host_time in pairs:
        assert abs(host_time - redis_time - SKEWS[skew]) < 30, "the worker's clock was not skewed"


def wait_alive(connection: Redis, name: str) -> None:
    wait_until(lambda: connection.exists(keys.alive_key(name)), timeout=30, what=f"worker {name} to beat")


def started_registry(connection: Redis) -> StartedJobRegistry:
    return StartedJobRegistry("default", connection=connection, job_class=ServiceJob, serializer=JSONSerializer)


@pytest.mark.parametrize("skew", SKEWS)
def test_a_delayed_job_starts_on_redis_time_on_a_skewed_worker(
    connection: Redis, processes: Processes, skew: str
) -> None:
    start_skewed(processes, skew)
    wait_alive(connection, "skewed")
    job = enqueue(connection, InternalRequest("workertest.stamp", args=["delayed"], delay=3))
    due = connection.zscore(keys.scheduled_key("default"), job.id)
    assert due is not None
    wait_until(lambda: recorded(connection, "delayed"), timeout=2 * LATE_BOUND_SECONDS, what="the delayed job")
    [(started, host)] = stamps(connection, "delayed")
    assert_skewed([(started, host)], skew)
    assert due <= started < due + LATE_BOUND_SECONDS


def test_a_fresh_job_with_a_ttl_runs_on_a_worker_whose_clock_is_ahead(connection: Redis, processes: Processes) -> None:
    job = enqueue(connection, InternalRequest("workertest.stamp", args=["fresh"], ttl=60))
    start_skewed(processes, "+5m")
    wait_until(lambda: status(job) in ("finished", "failed"), timeout=30, what="the job to end")
    assert status(job) == "finished"
    assert_skewed(stamps(connection, "fresh"), "+5m")


def test_a_job_past_its_ttl_is_discarded_by_a_worker_whose_clock_is_behind(
    connection: Redis, processes: Processes
) -> None:
    job = enqueue(connection, InternalRequest("workertest.stamp", args=["stale"], ttl=1))
    expires_at = json.loads(connection.hget(job.key, "meta") or b"{}")["expires_at"]
    wait_until(lambda: redis_now(connection) > expires_at + 0.5, timeout=10, what="the ttl to pass")
    start_skewed(processes, "-5m")
    wait_until(lambda: status(job) in ("finished", "failed"), timeout=30, what="the job to end")
    assert status(job) == "failed"
    assert "JobExpired" in (job.latest_result().exc_string or "")
    assert recorded(connection, "stale") == []


@pytest.mark.parametrize("skew", SKEWS)
def test_a_rate_limit_holds_across_a_skewed_and_a_correct_worker(
    connection: Redis, processes: Processes, skew: str
) -> None:
    jobs = 16  # workertest.rated_stamp allows 4 starts per second
    start_skewed(processes, skew)
    start_worker(processes, "--name", "correct", name="correct")
    # Both idle before the jobs come: a worker slow to start (faketime on a busy host) would otherwise see none.
    wait_until(
        lambda: all(connection.hget(keys.worker_key(n), "state") == b"idle" for n in ("skewed", "correct")),
        timeout=30,
        what="both workers idle",
    )
    enqueue_many(connection, "workertest.rated_stamp", [("default", ("starts",))] * jobs)
    wait_until(lambda: len(recorded(connection, "starts")) == jobs, timeout=60, what="every rated job")
    pairs = stamps(connection, "starts")
    skewed = [p for p in pairs if abs(p[1] - p[0]) > 60]
    assert skewed and len(skewed) < jobs  # both workers ran some
    assert_skewed(skewed, skew)
    starts = sorted(redis_time for redis_time, _ in pairs)
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) <= 5  # 4, and one in flight


def test_a_job_running_on_a_worker_whose_clock_is_behind_is_not_judged_abandoned(
    connection: Redis, processes: Processes
) -> None:
    job = enqueue_raw(connection, "workertest.sleep_once", "behind", 5)
    start_skewed(processes, "-5m")
    wait_until(lambda: status(job) == "started", timeout=30, what="the job to start")
    # What `rq info` and rq-dashboard run when they count started jobs, on this (true) host's clock.
    started_registry(connection).cleanup()
    assert status(job) == "started"
    start_worker(processes, "--name", "correct", name="correct")  # its registry maintenance and reaper look too
    wait_until(lambda: status(job) == "finished", timeout=30, what="the job to finish")
    assert_ran_once_and_never_failed(connection, job, "behind")


def test_a_worker_whose_clock_is_ahead_does_not_judge_others_jobs_abandoned(
    connection: Redis, processes: Processes
) -> None:
    job = enqueue_raw(connection, "workertest.sleep_once", "ahead", 5)
    start_worker(processes, "--name", "correct", name="correct")
    wait_until(lambda: status(job) == "started", timeout=30, what="the job to start")
    skewed = start_skewed(processes, "+5m")  # a starting worker cleans RQ's registries at once
    cleaned = "cleaning registries for queue: default"
    wait_until(lambda: cleaned in skewed.output(), timeout=30, what="the skewed worker's registry maintenance")
    wait_until(lambda: status(job) == "finished", timeout=30, what="the job to finish")
    assert_ran_once_and_never_failed(connection, job, "ahead")


def assert_ran_once_and_never_failed(connection: Redis, job: Any, key: str) -> None:
    assert recorded(connection, key) == ["1"]
    assert FailedJobRegistry("default", connection=connection).get_job_ids() == []
    assert [r.type.name for r in job.results()] == ["SUCCESSFUL"]
    assert connection.hget(job.key, "crashes") is None


def redis_now(connection: Redis) -> float:
    seconds, micros = connection.time()
    return seconds + micros / 1e6

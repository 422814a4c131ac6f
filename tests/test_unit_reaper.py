"""The reaper, branch by branch, on real Redis: what happens to each job a dead worker had claimed."""

from __future__ import annotations

from redis import Redis
from rq.job import Retry
from rq.registry import FailedJobRegistry, StartedJobRegistry

import service.tasks.diag  # noqa: F401 - registers diag.echo
from service.core import metrics
from service.core.keys import CLAIMERS_KEY, alive_key, claimed_key
from service.core.keys import POISON_JOBS_KEY as POISON_METRIC_KEY
from service.core.keys import REAPER_LOCK_KEY as LOCK_KEY
from service.jobs.model import ServiceJob
from service.workers.claim import Claim, Claimer
from service.workers.reaper import Reaper
from tests.worker_fixtures import enqueue

DEAD = "dead-worker"


def claimed_by(connection: Redis, worker: str, **options: object) -> ServiceJob:
    """A job that `worker` claimed and started (as its claim script does), then never finished."""
    job = enqueue(connection, "diag.echo", 1, **options)
    claim = Claimer(connection, worker).claim(["default"], 60)
    assert isinstance(claim, Claim) and claim.job_id == job.id and claim.execution_id
    return job


def status(connection: Redis, job: ServiceJob) -> str:
    return ServiceJob.fetch(job.id, connection=connection).get_status(refresh=True).value


def lane(connection: Redis) -> list[str]:
    return [i.decode() for i in connection.lrange("rq:queue:default", 0, -1)]


def counted(connection: Redis, name: str) -> int:
    return int(connection.hget(metrics.METRICS_KEY, metrics.field(name, "diag.echo", "default")) or 0)


def test_a_started_job_of_a_dead_worker_is_redelivered_within_the_crash_allowance(connection: Redis) -> None:
    job = claimed_by(connection, DEAD)
    assert Reaper(connection, crash_retries=1).reap() == 1
    assert (status(connection, job), lane(connection)) == ("queued", [job.id])
    assert connection.hget(job.key, "crashes") == b"1"
    assert counted(connection, "jobs_redelivered") == 1
    assert connection.llen(claimed_key(DEAD)) == 0
    assert not connection.sismember(CLAIMERS_KEY, DEAD)
    started = StartedJobRegistry("default", connection=connection)
    assert [m for m in connection.zrange(started.key, 0, -1) if m.startswith(job.id.encode())] == []


def test_over_the_crash_allowance_the_jobs_own_retry_policy_is_used(connection: Redis) -> None:
    job = claimed_by(connection, DEAD, retry=Retry(max=2))
    assert Reaper(connection, crash_retries=0).reap() == 1
    assert (status(connection, job), lane(connection)) == ("queued", [job.id])
    assert ServiceJob.fetch(job.id, connection=connection).retries_left == 1
    assert counted(connection, "jobs_retried") == 1


def test_over_the_allowance_with_no_retry_left_the_job_fails_as_a_poison_job(connection: Redis) -> None:
    job = claimed_by(connection, DEAD)
    connection.hset(job.key, "crashes", 3)  # its earlier workers died too
    assert Reaper(connection, crash_retries=3).reap() == 1
    assert status(connection, job) == "failed"
    assert job.id in FailedJobRegistry("default", connection=connection).get_job_ids()
    latest = ServiceJob.fetch(job.id, connection=connection).latest_result()
    assert latest is not None and "WorkerDied" in latest.exc_string and "4 crashes" in latest.exc_string
    assert connection.hget(POISON_METRIC_KEY, "diag.echo") == b"1"
    assert counted(connection, "jobs_failed") == 1
    assert lane(connection) == []


def test_a_claimed_job_that_never_started_goes_back_without_counting_a_crash(connection: Redis) -> None:
    job = enqueue(connection, "diag.echo", 1)
    connection.lrem("rq:queue:default", 1, job.id)
    connection.rpush(claimed_key(DEAD), job.id)  # claimed, killed before it started
    connection.sadd(CLAIMERS_KEY, DEAD)
    assert Reaper(connection).reap() == 1
    assert (status(connection, job), lane(connection)) == ("queued", [job.id])
    assert connection.hget(job.key, "crashes") is None


def test_a_job_whose_outcome_is_already_stored_is_only_dropped_from_the_claimed_list(connection: Redis) -> None:
    job = claimed_by(connection, DEAD)
    connection.hset(job.key, "status", "finished")  # the worker died after storing it
    assert Reaper(connection).reap() == 1
    assert status(connection, job) == "finished"
    assert (lane(connection), connection.llen(claimed_key(DEAD))) == ([], 0)
    assert connection.hget(job.key, "crashes") is None


def test_a_vanished_job_is_dropped(connection: Redis) -> None:
    job = claimed_by(connection, DEAD)
    connection.delete(job.key)
    assert Reaper(connection).reap() == 1
    assert (lane(connection), connection.llen(claimed_key(DEAD))) == ([], 0)
    assert not connection.exists(job.key)


def test_a_live_workers_claims_are_left_alone(connection: Redis) -> None:
    job = claimed_by(connection, "alive-worker")
    connection.set(alive_key("alive-worker"), 1, px=30_000)  # what its heartbeat writes
    assert Reaper(connection).reap() == 0
    assert status(connection, job) == "started"
    assert connection.lrange(claimed_key("alive-worker"), 0, -1) == [job.id.encode()]


def test_while_another_reaper_holds_the_lock_nothing_is_reaped_and_its_lock_is_kept(connection: Redis) -> None:
    job = claimed_by(connection, DEAD)
    connection.set(LOCK_KEY, "another-reaper", px=30_000)
    assert Reaper(connection).reap() == 0
    assert status(connection, job) == "started"
    assert connection.get(LOCK_KEY) == b"another-reaper"
    connection.delete(LOCK_KEY)
    assert Reaper(connection).reap() == 1
    assert not connection.exists(LOCK_KEY), "a reaper releases its own lock"


def test_a_worker_that_stopped_cleanly_is_forgotten(connection: Redis) -> None:
    reaper = Reaper(connection)
    connection.set(alive_key("leaving"), 1, px=30_000)
    connection.sadd(CLAIMERS_KEY, "leaving")
    reaper.forget("leaving")
    assert not connection.exists(alive_key("leaving"))
    assert not connection.sismember(CLAIMERS_KEY, "leaving")

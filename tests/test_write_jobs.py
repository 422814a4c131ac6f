"""The write_jobs script on a real Redis: one call writes a batch's job hashes, lane pushes, registries and claims."""

from __future__ import annotations

import calendar
import json

from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.core import keys, metrics
from service.jobs.enqueue import InternalRequest, plan
from service.jobs.writer import CLAIM_TTL_SECONDS, write


def test_queued_jobs_are_hashed_pushed_rung_counted_and_listed(connection: Redis) -> None:
    planned = [plan(InternalRequest(task="diag.echo", args=[n], queue="low")) for n in range(3)]
    outcome = write(connection, planned, {}, set())
    assert [o.status for o in outcome] == ["queued"] * 3
    ids = [p.id.encode() for p in planned]
    assert connection.lrange(keys.queue_key("low"), 0, -1) == ids
    assert connection.llen(keys.doorbell_key("low")) == 3
    assert connection.smembers(keys.QUEUES_KEY) == {keys.queue_key("low").encode()}
    assert connection.hget(keys.METRICS_KEY, metrics.field("jobs_enqueued", "diag.echo", "low")) == b"3"
    stored = connection.hgetall(keys.job_key(planned[1].id))
    assert stored[b"status"] == b"queued" and stored[b"origin"] == b"low" and stored[b"data"] == planned[1].data
    assert stored[b"created_at"] == stored[b"enqueued_at"]
    assert outcome[1].job(connection).args == [1]  # the job as restored without a read


def test_a_delayed_job_waits_in_the_scheduled_registry(connection: Redis) -> None:
    [planned] = [plan(InternalRequest(task="diag.echo", delay=60))]
    [outcome] = write(connection, [planned], {}, set())
    assert outcome.status == "scheduled" and planned.run_at is not None
    score = connection.zscore(keys.scheduled_key("default"), planned.id)
    assert score == calendar.timegm(planned.run_at.utctimetuple())
    assert connection.llen(keys.queue_key("default")) == 0
    assert b"enqueued_at" not in connection.hgetall(keys.job_key(planned.id))


def test_a_job_with_an_unfinished_parent_is_deferred_and_linked(connection: Redis) -> None:
    parent = plan(InternalRequest(task="diag.echo"))
    write(connection, [parent], {}, set())
    child = plan(InternalRequest(task="diag.echo", depends_on=[parent.id]))
    [outcome] = write(connection, [child], {}, {parent.id})
    assert outcome.status == "deferred"
    assert connection.zscore(keys.deferred_key("default"), child.id) is not None
    dependents = keys.DEPENDENTS_SHAPE[0] + parent.id + keys.DEPENDENTS_SHAPE[1]
    dependencies = keys.DEPENDENCIES_SHAPE[0] + child.id + keys.DEPENDENCIES_SHAPE[1]
    assert connection.smembers(dependents) == {child.id.encode()}
    assert connection.smembers(dependencies) == {parent.id.encode()}
    assert json.loads(connection.hget(keys.job_key(child.id), "dependency_ids")) == [parent.id]


def test_an_idempotency_key_is_claimed_once_per_batch(connection: Redis) -> None:
    first = plan(InternalRequest(task="diag.echo", args=[1]))
    repeat = plan(InternalRequest(task="diag.echo", args=[1]))
    first.claim_key = repeat.claim_key = keys.IDEMPOTENCY_PREFIX + "k1"
    outcome = write(connection, [first, repeat], {}, set())
    assert [o.created for o in outcome] == [True, False] and outcome[1].planned is first
    assert connection.get(keys.IDEMPOTENCY_PREFIX + "k1") == first.id.encode()
    assert CLAIM_TTL_SECONDS - 10 < connection.ttl(keys.IDEMPOTENCY_PREFIX + "k1") <= CLAIM_TTL_SECONDS
    assert not connection.exists(keys.job_key(repeat.id))

"""Job templates: the RQ job hash fields every job with the same task and options shares, built by RQ itself.

A template is what RQ's `Job.to_dict()` writes (JSON serializer) for a job
created the way `Queue.create_job` would, minus the fields that differ per
job (PER_JOB_FIELDS, and jittered retry intervals), so a Lua script can
write thousands of jobs by adding only those. The fields RQ writes empty
(callbacks, group, times and worker not yet set) are left out: RQ's restore
reads an empty field and an absent one alike, and a finished job keeps
fewer bytes for its result_ttl (docs/redis.md, "Memory per finished job"). The API's writer
(service.jobs.writer) and the scheduler's fire script (service.schedules.runs)
both use it, so an API job and a schedule run are laid out alike.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from redis import Redis
from rq.callbacks import Callback
from rq.job import JobStatus, Retry

from service.core.keys import PLACEHOLDER_ID
from service.jobs.model import ServiceJob
from service.tasks.registry import RetryPolicy

# Fields a script sets per job rather than copying from the template.
PER_JOB_FIELDS = frozenset({"created_at", "enqueued_at", "data", "meta"})


class JobOptions(NamedTuple):
    """What a job's template depends on (its status aside)."""

    task: str
    lane: str
    timeout: int
    result_ttl: int
    failure_ttl: int
    description: str
    retry: RetryPolicy
    on_failure: str | None = None  # the name of one of service.jobs.callbacks' callbacks


@lru_cache(maxsize=4096)
def template(options: JobOptions, status: str) -> tuple[str, ...]:
    """The hash fields (name, value, ...) RQ's Job.to_dict() writes for every job with `options` and `status`.

    A retry policy with jitter gives each job its own `retry_intervals`
    (RetryPolicy.intervals()), so the template leaves that field out too, as it does every empty one.
    """
    retry = options.retry
    job = ServiceJob.create(
        options.task,
        args=[],
        kwargs={},
        connection=Redis(),  # never used to connect: only to_dict() is called
        timeout=options.timeout,
        result_ttl=options.result_ttl,
        failure_ttl=options.failure_ttl,
        description=options.description,
        id=PLACEHOLDER_ID,
        origin=options.lane,
        status=JobStatus(status),
        retry=Retry(max=retry.max, interval=[0] if retry.jittered else retry.intervals()) if retry.max else None,
        on_failure=Callback(options.on_failure) if options.on_failure else None,
    )
    fields: list[str] = []
    for key, value in job.to_dict().items():
        text = value.value if isinstance(value, JobStatus) else str(value)
        if not text or key in PER_JOB_FIELDS or (key == "retry_intervals" and retry.jittered):
            continue
        fields += [key, text]
    return tuple(fields)

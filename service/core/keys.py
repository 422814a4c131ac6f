"""Keys: every Redis key name the service reads or writes, RQ's and its own, in one place.

RQ's key shapes are taken from RQ's own classes and templates, so RQ's
`RQ_KEY_PREFIX` or an RQ release that renames a key changes them here and
nowhere else; a shape this module cannot split (the id no longer at its
end) fails at import, not in production. The service's own keys start with
`svc:`. Lua scripts never spell a key: they get it in KEYS, or, for a key
made from data (a claimed job's hash), its prefix in ARGV from here.
docs/redis.md lists every key with its type, writer and TTL.
"""

from __future__ import annotations

from redis import Redis
from rq.command import PUBSUB_CHANNEL_TEMPLATE
from rq.defaults import RQ_KEY_PREFIX
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.suspension import WORKERS_SUSPENDED
from rq.worker import Worker
from rq.worker_registration import REDIS_WORKER_KEYS


def _prefix(shape: str, marker: str = "{0}") -> str:
    """The part of RQ's key `shape` before its id; RuntimeError if the id is not at the end."""
    head, found, tail = shape.partition(marker)
    if not found or tail:
        raise RuntimeError(f"RQ's key shape {shape!r} no longer ends with its id: update service/core/keys.py")
    return head


# -- RQ's keys (RQ_KEY_PREFIX is "rq" unless set in the environment) ---------------------------

RQ_PREFIX = RQ_KEY_PREFIX
QUEUE_PREFIX = Queue.redis_queue_namespace_prefix  # list of job ids, one per lane
QUEUES_KEY = Queue.redis_queues_keys  # set of queue keys
JOB_PREFIX = Job.redis_job_namespace_prefix  # job hash
WORKER_PREFIX = Worker.redis_worker_namespace_prefix  # worker hash
WORKERS_KEY = REDIS_WORKER_KEYS  # set of worker keys
STARTED_PREFIX = _prefix(StartedJobRegistry.key_template)  # "wip": started jobs' executions
FINISHED_PREFIX = _prefix(FinishedJobRegistry.key_template)
FAILED_PREFIX = _prefix(FailedJobRegistry.key_template)
SCHEDULED_PREFIX = _prefix(ScheduledJobRegistry.key_template)
DEFERRED_PREFIX = _prefix(DeferredJobRegistry.key_template)
CANCELED_PREFIX = _prefix(CanceledJobRegistry.key_template)
EXECUTIONS_PREFIX = _prefix(ExecutionRegistry.key_template)  # a job's executions
RESULTS_PREFIX = _prefix(Result.get_key("{0}"))  # a job's result stream
PUBSUB_PREFIX = _prefix(PUBSUB_CHANNEL_TEMPLATE, "%s")  # a worker's command channel
WORKERS_SUSPENDED_KEY = WORKERS_SUSPENDED  # `rq suspend` sets it: workers take no new job


def _execution_prefix() -> str:
    """RQ's execution hash prefix: the key is this + "<job id>:<execution id>" (RQ's composite key)."""
    execution = Execution("{1}", "{0}", connection=None)  # type: ignore[arg-type] - only key names are read
    if execution.composite_key != "{0}:{1}":
        raise RuntimeError(f"RQ's execution composite key changed ({execution.composite_key!r}): update keys.py")
    return _prefix(execution.key, execution.composite_key)


EXECUTION_PREFIX = _execution_prefix()


# A valid RQ job id that stands for any job's id in key shapes and job templates.
PLACEHOLDER_ID = "0job0id0placeholder0"


def _around_id(shape: str) -> tuple[str, str]:
    """RQ's key `shape` for PLACEHOLDER_ID, split around the id (for a script to join with any id)."""
    before, found, after = shape.partition(PLACEHOLDER_ID)
    if not found:
        raise RuntimeError(f"RQ's key shape {shape!r} has no job id: update service/core/keys.py")
    return before, after


DEPENDENTS_SHAPE = _around_id(Job.dependents_key_for(PLACEHOLDER_ID))  # set of a parent's dependent ids
# Never connects: only the key name is read.
DEPENDENCIES_SHAPE = _around_id(Job(PLACEHOLDER_ID, connection=Redis()).dependencies_key)  # set of its parents

# rq-scheduler 0.14 names these itself (Scheduler.scheduler_lock_key and
# .scheduled_jobs_key), outside RQ_KEY_PREFIX; workers never import
# rq-scheduler, so they are restated here and a test checks they match.
SCHEDULER_LOCK_KEY = "rq:scheduler_lock"
SCHEDULED_JOBS_KEY = "rq:scheduler:scheduled_jobs"


def queue_key(lane: str) -> str:
    return QUEUE_PREFIX + lane


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def worker_key(worker_name: str) -> str:
    return WORKER_PREFIX + worker_name


def worker_executions_key(worker_name: str) -> str:
    return WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name)


def started_key(lane: str) -> str:
    return STARTED_PREFIX + lane


def finished_key(lane: str) -> str:
    return FINISHED_PREFIX + lane


def scheduled_key(lane: str) -> str:
    return SCHEDULED_PREFIX + lane


def deferred_key(lane: str) -> str:
    return DEFERRED_PREFIX + lane


def executions_key(job_id: str) -> str:
    return EXECUTIONS_PREFIX + job_id


def results_key(job_id: str) -> str:
    return RESULTS_PREFIX + job_id


# -- the service's own keys -----------------------------------------------------------------------

CLAIMED_KEY = "svc:claimed:{worker}"  # list: ids a worker took from the lanes and has not finished
CLAIMERS_KEY = "svc:claimers"  # set: workers that may hold claimed ids
DOORBELL_KEY = "svc:doorbell:{lane}"  # list: one wake-up token per push
WAITING_KEY = "svc:waiting:{lane}"  # zset: jobs held back by a limit, scored by when to retry
ALIVE_KEY = "svc:alive:{worker}"  # string with a short TTL: the worker's heartbeat
REAPER_LOCK_KEY = "svc:reaper:lock"  # lock: one reaper pass at a time
LIMIT_RUNNING_KEY = "svc:limit:{task}:running"  # zset: running job ids, scored by slot expiry
LIMIT_STARTS_KEY = "svc:limit:{task}:starts"  # zset: recent starts, scored by start time
IDEMPOTENCY_PREFIX = "svc:idem:"  # string: idempotency key -> job id
UNIQUE_PREFIX = "svc:unique:"  # string: unique task + arguments -> job id
# Fair share within a lane (service.workers.claim): the groups with waiting jobs take turns.
GROUPS_KEY = "svc:groups:{lane}"  # list: the lane's turns: its groups with indexed jobs, LANE_HEAD, UNGROUPED
GROUP_SUFFIX = ":{group}"  # after GROUPS_KEY: list of a group's waiting job ids, oldest first (an index)
HELD_GROUPS_KEY = "svc:groups-held:{lane}"  # hash: group -> until when (epoch s) it is at a task's group cap
LIMIT_GROUP_KEY = "svc:limit:{task}:group:{group}"  # zset: running jobs of a task in a group, by slot expiry
LANE_HEAD = "*"  # the turn that takes the lane's head, whatever it is (jobs RQ itself put back)
UNGROUPED = "~"  # the group of the jobs without one (never a group name: not in [A-Za-z0-9_.:-])
BATCH_KEY = "svc:batch:{batch}"  # hash: a batch's total, tally, its on_complete job's fields (service.jobs.batches)
BATCH_PENDING_KEY = "svc:batch:{batch}:pending"  # set: the ids of its jobs that have not ended
METRICS_KEY = "svc:metrics"  # hash: counters and histograms (service.core.metrics)
POISON_JOBS_KEY = "svc:metrics:poison_jobs"  # hash: task -> jobs failed for crashing their workers
# The dashboard's charts (service.ops.rollup): one summary per minute, written by one process a minute.
ROLLUP_KEY = "svc:rollup"  # list: JSON summaries, newest first, the last 24 h kept
ROLLUP_MINUTE_KEY = "svc:rollup:minute"  # string: the last minute (epoch minutes) a process claimed
ROLLUP_TOTALS_KEY = "svc:rollup:totals"  # string: the counters' totals at the last summary (JSON)


# Pub/sub channel per job: every transition that ends a job (finished, failed, stopped, canceled) publishes
# its status there, in the same script or transaction; GET /jobs/<id>?wait= listens (service.jobs.waits).
ENDED_PREFIX = "svc:ended:"


def ended_channel(job_id: str) -> str:
    """The channel a job's end is published on."""
    return ENDED_PREFIX + job_id


def claimed_key(worker_name: str) -> str:
    """The in-progress list of worker `worker_name`."""
    return CLAIMED_KEY.format(worker=worker_name)


def doorbell_key(lane: str) -> str:
    """The wake-up list of `lane`: one token per push, consumed by claims."""
    return DOORBELL_KEY.format(lane=lane)


def waiting_key(lane: str) -> str:
    """The sorted set of `lane` jobs held back by a limit until their score (epoch seconds)."""
    return WAITING_KEY.format(lane=lane)


def alive_key(worker_name: str) -> str:
    """The liveness key worker `worker_name` renews while it lives."""
    return ALIVE_KEY.format(worker=worker_name)


def groups_key(lane: str) -> str:
    """The turns of `lane`'s groups (a list rotated by each fair claim)."""
    return GROUPS_KEY.format(lane=lane)


def group_key(lane: str, group: str) -> str:
    """The index of `group`'s waiting jobs in `lane` (the work script joins groups_key and the group the same way)."""
    return groups_key(lane) + GROUP_SUFFIX.format(group=group)


def held_groups_key(lane: str) -> str:
    return HELD_GROUPS_KEY.format(lane=lane)


def limit_group_key(task: str, group: str) -> str:
    return LIMIT_GROUP_KEY.format(task=task, group=group)


def batch_key(batch_id: str) -> str:
    return BATCH_KEY.format(batch=batch_id)


def batch_pending_key(batch_id: str) -> str:
    return BATCH_PENDING_KEY.format(batch=batch_id)


def limit_running_key(task: str) -> str:
    return LIMIT_RUNNING_KEY.format(task=task)


def limit_starts_key(task: str) -> str:
    return LIMIT_STARTS_KEY.format(task=task)


class ScheduleKeys:
    """Key shapes of the schedule store, in one place (the Lua scripts receive them as arguments)."""

    prefix = "svc:schedule:"
    index = "svc:schedules"
    # rq-scheduler's own ZSET is `rq:scheduler:scheduled_jobs`; schedules sit
    # beside it, not in it: stock Scheduler.get_jobs() deletes every member
    # that is not an RQ job hash, and a schedule is not one.
    due = SCHEDULED_JOBS_KEY + ":schedules"
    buffered = "svc:schedules:buffered"
    wakeup = "svc:schedules:wakeup"
    declared = "svc:schedules:declared"
    # Totals over all schedules for metrics: runs, missed, skipped, dropped,
    # coalesced, and a lag histogram (lag_ms_bucket_<upper bound>, _sum, _count).
    stats = "svc:schedules:stats"
    # The lease key a firing without a leader (run now, backfill) names: never set, so never checked.
    no_lease = "svc:no-lease"
    # Templates: a spec minus its args and kwargs, stored once however many schedules share it (by
    # content hash), and how many schedules use each (service.schedules.store).
    templates = "svc:schedules:templates"
    template_refs = "svc:schedules:template_refs"
    # "2" once every schedule is in today's layout (service.schedules.migrate): start-up skips the scan.
    layout = "svc:schedules:layout"
    # The fire script's run job templates (`<prefix><n>`): written and deleted within one call, never seen outside it.
    fire_scratch = "svc:schedules:fire-scratch:"

    @classmethod
    def schedule(cls, schedule_id: str) -> str:
        return cls.prefix + schedule_id

    @classmethod
    def runs(cls, schedule_id: str) -> str:
        """The first release's list of a schedule's run records (now a ring in its hash): read to migrate."""
        return cls.prefix + schedule_id + ":runs"


class CalendarKeys:
    """Key shapes of calendars: dates a schedule skips, shared by any number of schedules (never copied)."""

    prefix = "svc:calendar:"  # hash: dates (JSON), digest, description, origin, created_at, updated_at
    index = "svc:calendars"  # zset of calendar ids (score 0: pages in id order)
    refs = "svc:calendars:refs"  # hash: calendar id -> schedules that skip it
    declared = "svc:calendars:declared"  # set: calendars created from SCHEDULES_FILE

    @classmethod
    def calendar(cls, calendar_id: str) -> str:
        return cls.prefix + calendar_id


# The audit log: a stream capped with XADD MAXLEN ~ (service.ops.audit).
AUDIT_KEY = "svc:audit"

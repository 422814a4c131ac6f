"""Compat: every place the service reaches into RQ, rq-scheduler or rq-dashboard beyond their public API.

The service is fast and loses no job because it overrides RQ's worker,
copies some of RQ's storage steps into Lua and patches a few RQ functions.
This module names each of those reaches in one table (REACHES), holds RQ's
process-wide patches (patch_rq), and warns at process start when the
installed libraries are not the releases the table was checked against
(check_versions).

The table is tested (tests/test_parity_reach.py): every target must still
exist with the same source (`digest`, a hash of the library's code as
checked), every name we override must be listed, and the parity tests
(tests/test_parity_*.py) run the same jobs through stock RQ and through the
service and compare what lands in Redis. An upgrade that changes anything
listed here fails those tests; docs/upgrading-rq.md says what to do then.

May import: the standard library, rq and service.core.clock (never rq-scheduler or
rq-dashboard, which a worker does not load: they are named here by their dotted paths).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import rq.executions
import rq.intermediate_queue
import rq.job
import rq.queue
import rq.rate_limit
import rq.registry
import rq.repeat
import rq.results
import rq.scheduler
import rq.worker.base
import rq.worker.worker_classes
from rq.serializers import resolve_serializer
from rq.utils import str_to_date

from service.core import clock

log = logging.getLogger("service.compat")

# The releases every reach below was read against and the parity tests ran on.
# They are also the compatible range the tests prove: no other release has
# been through them, so requirements.txt pins exactly these.
CHECKED = {"rq": "3.0.0", "rq-scheduler": "0.14.0", "rq-dashboard": "0.9.0"}
DISTRIBUTION = {"rq": "rq", "rq_scheduler": "rq-scheduler", "rq_dashboard": "rq-dashboard"}

# Kinds of reach.
OVERRIDE = "override"  # a public method replaced (super() may or may not be called)
PRIVATE = "private"  # a private method overridden or called, or a private attribute read or written
PATCH = "patch"  # a library module's attribute replaced, process-wide
COPY = "copy"  # a library's storage step redone by our code (mostly Lua): it must write what the library writes
KEY = "key"  # a library key name, key prefix or field layout written or read by our code
RELY = "rely"  # public, but we depend on a detail of its behaviour that its docs do not promise


@dataclass(frozen=True)
class Reach:
    """One reach: `target` (the library's object, dotted) used by `ours` (dotted, or a file path) as `kind`."""

    target: str
    ours: str
    kind: str
    note: str  # what it does, and what breaks if the library changes it
    digest: str  # sha256 of the target's source (or repr) as checked, first 12 hex digits

    @property
    def library(self) -> str:
        return DISTRIBUTION[self.target.split(".", 1)[0].split(":", 1)[0]]

    @property
    def checked(self) -> str:
        """The release this reach was checked against, e.g. 'rq 3.0.0'."""
        return f"{self.library} {CHECKED[self.library]}"


# fmt: off
REACHES: tuple[Reach, ...] = (
    # -- the worker: RQ's Worker subclassed, its loop and outcome paths replaced --------------------------
    Reach("rq.worker.base.BaseWorker.work", "service.workers.worker.ServiceWorker.work", OVERRIDE, "the whole loop is ours (claim, doorbell wait, outages); a step RQ adds to its loop is not run", "04b5cdf8e554"),
    Reach("rq.worker.base.BaseWorker.set_state", "service.workers.worker.ServiceWorker.set_state", OVERRIDE, "super() plus the state the work script knows the hash holds (it writes only a change)", "bb8d4f1d93ff"),
    Reach("rq.worker.base.BaseWorker.serialize", "service.workers.worker.ServiceWorker.serialize", OVERRIDE, "adds the state, so a new worker never reads '?'", "219368b12c2d"),
    Reach("rq.worker.worker_classes.Worker.execute_job", "service.workers.worker.ServiceWorker.execute_job", OVERRIDE, "no-fork runs in the worker, fork through the fork server", "69165f532139"),
    Reach("rq.worker.worker_classes.Worker.fork_work_horse", "service.workers.worker.ServiceWorker.fork_work_horse", OVERRIDE, "the fork server forks; RQ_WORKER_ID/RQ_JOB_ID copied into the horse", "18679b6c0638"),
    Reach("rq.worker.worker_classes.Worker.wait_for_horse", "service.workers.worker.ServiceWorker.wait_for_horse", OVERRIDE, "returns (pid, wait status, rusage) as monitor_work_horse reads it", "08472169a63f"),
    Reach("rq.worker.worker_classes.Worker.monitor_work_horse", "service.workers.worker.ServiceWorker.execute_job", RELY, "called as is: reads _horse_pid, calls wait_for_horse, handle_work_horse_killed, handle_job_failure", "218a5b8f3eff"),
    Reach("rq.worker.worker_classes.Worker.kill_horse", "service.workers.worker.ServiceWorker.kill_horse", OVERRIDE, "no fork: a stop-job command is raised inside the running job instead", "2fefa0bd4db1"),
    Reach("rq.worker.base.BaseWorker.get_heartbeat_ttl", "service.workers.worker.ServiceWorker.get_heartbeat_ttl", OVERRIDE, "called with job=None by the claim: outlives our liveness key", "8878c9689380"),
    Reach("rq.worker.base.BaseWorker.prepare_execution", "service.workers.worker.ServiceWorker.prepare_execution", OVERRIDE, "returns the execution the work script's claim started", "899b4eaa689f"),
    Reach("rq.worker.base.BaseWorker.prepare_job_execution", "service.workers.worker.ServiceWorker.prepare_job_execution", OVERRIDE, "a no-op: the work script's claim did it (see the copies below)", "d08dd32962e3"),
    Reach("rq.worker.base.BaseWorker.perform_job", "service.workers.worker.ServiceWorker.perform_job", OVERRIDE, "stores outcomes through outages; plain successes in one Lua call", "1f0e40678ae5"),
    Reach("rq.worker.base.BaseWorker.handle_execution_ended", "service.workers.worker.ServiceWorker.handle_execution_ended", OVERRIDE, "drops the job heartbeat round trip; keeps ended_at and last_heartbeat", "23748b027980"),
    Reach("rq.worker.base.BaseWorker.cleanup_execution", "service.workers.worker.ServiceWorker.cleanup_execution", OVERRIDE, "super() plus our claimed list and concurrency slot, same pipeline", "4aef566a7d19"),
    Reach("rq.worker.base.BaseWorker.handle_job_failure", "service.workers.worker.ServiceWorker.handle_job_failure", OVERRIDE, "a dead horse is a crash (reaper), not a failure; the store goes to _store_failure", "7432afe53b9f"),
    Reach("rq.worker.base.BaseWorker.handle_job_failure", "service.workers.worker.ServiceWorker._store_failure", COPY, "copied without _release_slot_safely and disable_default_exception_handler; a store error raises (retried through an outage) where RQ logs it", "7432afe53b9f"),
    Reach("rq.worker.base.BaseWorker.setup_work_horse_signals", "service.workers.worker.ServiceWorker.setup_work_horse_signals", OVERRIDE, "the horse ignores SIGTERM/SIGINT", "cfc682cb5f0a"),
    Reach("rq.worker.base.BaseWorker.handle_work_horse_killed", "service.workers.worker.ServiceWorker.handle_work_horse_killed", OVERRIDE, "super() then marks a crash; monitor_work_horse must call it before handle_job_failure", "274a4d21672c"),
    Reach("rq.worker.base.BaseWorker.maintain_heartbeats", "service.workers.worker.ServiceWorker.maintain_heartbeats", OVERRIDE, "a no-op: the heartbeat thread renews the worker and writes the running job's execution records", "b73451c9b97f"),
    Reach("rq.worker.base.BaseWorker.request_stop", "service.workers.worker.ServiceWorker.request_stop", OVERRIDE, "warm shutdown with a grace period; no _shutdown/request_force_stop", "f934e7e7e6ee"),
    Reach("rq.worker.base.BaseWorker.check_for_suspension", "service.workers.worker.ServiceWorker._step", RELY, "called when the heartbeat saw `rq suspend`: sets state suspended, waits, restores the state", "e8095ae1fcf9"),
    Reach("rq.worker.base.BaseWorker.heartbeat", "service.workers.heartbeat.Heartbeat.beat", COPY, "same keys from our heartbeat thread: worker hash last_heartbeat and TTL, executions set TTL", "63b1089fd146"),
    Reach("rq.worker.base.BaseWorker._set_connection", "service.workers.worker.ServiceWorker._set_connection", PRIVATE, "keeps the client's socket timeout (RQ raises it to 415 s)", "38ebd371028a"),
    Reach("rq.worker.base.BaseWorker._install_signal_handlers", "service.workers.worker.ServiceWorker._install_signal_handlers", PRIVATE, "our handlers; only our work() calls it", "f30e3c58661a"),
    Reach("rq.worker.base.BaseWorker._pubsub_exception_handler", "service.workers.worker.ServiceWorker._pubsub_exception_handler", PRIVATE, "passed by subscribe() to redis-py; renamed, a Redis error kills the stop-job channel", "5213e36c3b77"),
    Reach("rq.worker.base.BaseWorker._start_scheduler", "service.workers.worker.ServiceWorker._start_scheduler", PRIVATE, "copied in service.workers.delayed.start_delayed_jobs with DelayedJobs for RQScheduler; work() calls it", "49c229109608"),
    Reach("rq.scheduler.RQScheduler.work", "service.workers.delayed.DelayedJobs.work", OVERRIDE, "RQ's loop (register_birth, should_reacquire_locks, heartbeat, enqueue_scheduled_jobs, sleep, stop) on Redis's clock, through outages", "5d1810bdd439"),
    Reach("rq.scheduler.RQScheduler.start", "service.workers.worker.ServiceWorker._scheduler_gone", PRIVATE, "reads RQScheduler._process to restart a scheduler child that exited", "7995068483ae"),
    Reach("rq.worker.base.BaseWorker._finalize_failure", "service.workers.worker.ServiceWorker.perform_job", PRIVATE, "every failure: failure callback, handle_exception, handle_job_failure", "6d1b8bd1117e"),
    Reach("rq.worker.base.BaseWorker._finalize_success", "service.workers.worker.ServiceWorker._store_success", PRIVATE, "every success that is not plain: callback, retry or success path, webhooks", "ef21a613e808"),
    Reach("rq.worker.base.BaseWorker._enqueue_dependents_safely", "service.workers.worker.ServiceWorker._store_success", PRIVATE, "enqueues dependents after a plain success or a failure", "14af202f5cc4"),
    Reach("rq.worker.base.BaseWorker.__init__", "service.workers.worker.ServiceWorker", PRIVATE, "reads/writes _state, _stop_requested, _shutdown_requested_date, _horse_pid, _stopped_job_id, _is_horse, executions, last_cleaned_at (a failed maintenance waits its interval)", "86f83bb69582"),
    Reach("rq.command.handle_stop_job_command", "service.workers.worker.ServiceWorker.kill_horse", RELY, "sets worker._stopped_job_id, then calls kill_horse(): a no-fork stop relies on that order", "a796428b5d32"),
    Reach("rq.worker_pool.WorkerPool.get_worker_process", "service.workers.pool.ServiceWorkerPool.get_worker_process", OVERRIDE, "called by keyword from WorkerPool.start_worker", "f1985a4efe4f"),
    # -- the job and queue model ------------------------------------------------------------------------
    Reach("rq.job.Job.__init__", "service.jobs.model.ServiceJob", PRIVATE, "reads/writes Job._result, _status, _success/_failure/_stopped_callback_name", "94811c731ae3"),
    Reach("rq.job.Job.func", "service.jobs.model.ServiceJob.func", OVERRIDE, "a registered task name, never an import path", "2347dd5ec691"),
    Reach("rq.job.Job.success_callback", "service.jobs.model.ServiceJob.success_callback", OVERRIDE, "one of the service's own callbacks, never an import path", "6d23cf7db33e"),
    Reach("rq.job.Job.failure_callback", "service.jobs.model.ServiceJob.failure_callback", OVERRIDE, "as success_callback", "0bccbb92ea7d"),
    Reach("rq.job.Job.stopped_callback", "service.jobs.model.ServiceJob.stopped_callback", OVERRIDE, "as success_callback", "39852cf148dc"),
    Reach("rq.job.Job.should_retry", "service.jobs.model.ServiceJob.should_retry", OVERRIDE, "an expired job is not retried; RQ must read should_retry, not retries_left", "cf765572a37a"),
    Reach("rq.job.Job.set_status", "service.jobs.model.ServiceJob.set_status", OVERRIDE, "super() plus PUBLISH on the job's ended channel for finished, failed, stopped, canceled, in the caller's pipeline: every Python path that ends a job goes through it", "a093b9649641"),
    Reach("rq.job.Job.delete", "service.jobs.model.ServiceJob.delete", OVERRIDE, "super() plus PUBLISH on the job's ended channel (a result_ttl 0 success deletes the job instead of setting finished)", "1a15005871aa"),
    Reach("rq.job.Job.prepare_for_execution", "service.jobs.model.ServiceJob.prepare_for_execution", OVERRIDE, "counts attempts (dead path: the work script starts jobs)", "4e8e0eca634d"),
    Reach("rq.job.Job.fetch_many", "service.jobs.model.ServiceJob.fetch_many", OVERRIDE, "the same HGETALLs and restore, in a pipeline without MULTI (refused by a full Redis even for reads)", "04cf72c02cbd"),
    Reach("rq.job.Job.restore", "service.jobs.model.ServiceJob.restore", OVERRIDE, "reads our attempts field from the raw hash; fields not as the service writes them are left out and named in damage", "859daf950a3e"),
    Reach("rq.job.Job._deserialize_data", "service.jobs.model.ServiceJob._deserialize_data", PRIVATE, "a task call is exactly (name, None, [args], {kwargs}); anything else is a DeserializationError", "00c06178d415"),
    Reach("rq.job.Job.save", "service.jobs.model.ServiceJob.restore", RELY, "HSET mapping: our attempts, crashes and progress fields in RQ's job hash survive saves", "94a90064c898"),
    Reach("rq.queue.Queue.get_redis_server_version", "service.jobs.model.ServiceQueue.get_redis_server_version", OVERRIDE, "remembered per connection pool; sets redis_server_version", "8cf49db7fc89"),
    Reach("rq.queue.Queue.push_job_id", "service.jobs.model.ServiceQueue.push_job_id", OVERRIDE, "rings the lane's doorbell; push_commands replays its rpush/lpush", "da2f59b7ff9a"),
    Reach("rq.serializers.resolve_serializer", "service.core.compat.resolve_serializer_once", PATCH, "patched into rq.job, rq.queue, rq.registry, rq.results: remembered per serializer", "b7e9d7f07791"),
    Reach("rq.utils.str_to_date", "service.core.compat.parse_rq_date", PATCH, "patched into rq.job: RQ's own timestamp shape parsed without strptime", "7e4d7f7531e2"),
    Reach("rq.utils.now", "service.core.clock.utcnow", PATCH, "patched into every RQ module that reads it (RQ_CLOCK_MODULES): RQ's timestamps and expiries on Redis's clock", "77df3839f131"),
    Reach("rq.utils.current_timestamp", "service.core.clock.timestamp", PATCH, "as rq.utils.now: registry scores (started, finished, scheduled due) on Redis's clock", "0e518e6dd261"),
    Reach("rq.utils.utcformat", "service.core.compat.parse_rq_date", RELY, "the timestamp shape parse_rq_date expects ('%Y-%m-%dT%H:%M:%S.%fZ')", "c29988f57cd7"),
    # -- storage steps copied into Lua or Python --------------------------------------------------------
    Reach("rq.queue.Queue.dequeue_any", "service.workers.claim.Claimer.claim", COPY, "work.lua (claim part) takes the head of the first non-empty lane (LMOVE, not BLPOP)", "2452e56ad519"),
    Reach("rq.executions.prepare_execution", "service.workers.claim.Claimer.claim", COPY, "work.lua (claim part) writes the started registry; the heartbeat writes the execution hash, execution registry and worker executions set for a job still running at its next beat", "e8d5a964e2a1"),
    Reach("rq.executions.Execution.serialize", "service.workers.heartbeat.Heartbeat._record", RELY, "Execution.save writes the execution hash at the running job's first beat (deferred from the claim)", "6ebaef2afef4"),
    Reach("rq.executions.ExecutionRegistry.add", "service.workers.heartbeat.Heartbeat._record", RELY, "called at the running job's first beat (score now+ttl+60, TTL ttl+60), with the worker executions set", "0ee58742c13a"),
    Reach("rq.registry.StartedJobRegistry.add_execution", "service.workers.claim.Claimer.claim", COPY, "member '<job>:<execution>' with score now+ttl in work.lua", "058aeccefc8e"),
    Reach("rq.job.Job.prepare_for_execution", "service.workers.claim.Claimer.claim", COPY, "status started, started_at, worker_name, PERSIST in work.lua; last_heartbeat at the heartbeat's first beat of the job", "4e8e0eca634d"),
    Reach("rq.worker.base.BaseWorker.handle_job_success", "service.workers.finish.Finisher.finish", COPY, "work.lua (finish part; counters kept by the worker, service.workers.tally): job hash, finished registry, result, execution clean-up", "9dda7c7d3ca1"),
    Reach("rq.job.Job._handle_success", "service.workers.finish.Finisher.finish", COPY, "status finished, ended_at (not last_heartbeat, its copy), the result stream entry, the finished registry", "35b96f8229b6"),
    Reach("rq.results.Result.save", "service.workers.finish.Finisher.finish", COPY, "XADD MAXLEN ~ 10 with Result.serialize()'s type and return_value, then EXPIRE or PERSIST", "1433b6a45f0a"),
    Reach("rq.job.Job.cleanup", "service.workers.finish.Finisher.finish", COPY, "EXPIRE the job, its dependents and dependencies keys by the result TTL", "16734aeb1eea"),
    Reach("rq.registry.FinishedJobRegistry.add", "service.workers.finish.Finisher.finish", COPY, "score now+ttl, +inf for -1", "2ae9a477b803"),
    Reach("rq.executions.Execution.delete", "service.workers.finish.Finisher.finish", COPY, "DEL the execution, ZREM wip and execution registry, SREM the worker's set", "8c36e0625109"),
    Reach("rq.queue.Queue.push_job_id", "service.workers.claim.Claimer.requeue", COPY, "requeue.lua: LPUSH to the lane and status queued", "da2f59b7ff9a"),
    Reach("rq.executions.parse_composite_key", "service.workers.reaper._forget_execution", COPY, "wip members are '<job id>:<execution id>'", "7861b4d223be"),
    Reach("rq.job_lifecycle.record_job_failure", "service.workers.reaper.Reaper.recover", PRIVATE, "not exported by rq: fails a poison job (no callback, no dependents)", "74724fe15e44"),
    Reach("rq.job.Job.set_status", "service.workers.worker.ServiceWorker._hold_back", COPY, "HSET status queued by hand for a job held back by a limit (it waits in svc:waiting, not in the lane)", "a093b9649641"),
    Reach("rq.scheduler.RQScheduler.enqueue_scheduled_jobs", "service.workers.claim.Claimer.wait", RELY, "jobs RQ's scheduler child moves into a lane ring no doorbell: an idle worker finds them on its next wake-up (1 s)", "a31620c83110"),
    Reach("rq.registry.FailedJobRegistry.requeue", "service.jobs.operations.requeue", RELY, "a plain Queue puts the job back: no doorbell, found on the next wake-up", "3336aabc2c5c"),
    Reach("rq.job.Job._handle_failure", "service.workers.worker.ServiceWorker._store_failure", PRIVATE, "failed registry, failure result; called by keyword", "3b947507f202"),
    Reach("rq.queue.Queue.enqueue_job", "service.jobs.writer.write", COPY, "write_jobs.lua writes Job.to_dict() templates, pushes, registries, rq:queues", "05ff025c22a0"),
    Reach("rq.job.Job.to_dict", "service.jobs.writer.write", COPY, "the job hash layout; per-job fields created_at, enqueued_at, data, meta, retry_intervals", "9e1a56a9cd4b"),
    Reach("rq.registry.ScheduledJobRegistry.schedule", "service.jobs.writer.write", COPY, "scheduled jobs: score timegm(run at)", "302aa59d2301"),
    Reach("rq.registry.DeferredJobRegistry.add", "service.jobs.writer.write", COPY, "deferred jobs: score now", "2cb69b17453f"),
    Reach("rq.job.Job.register_dependency", "service.jobs.writer.write", COPY, "dependents and dependencies sets", "959436aaab78"),
    Reach("rq.queue.Queue.setup_dependencies", "service.jobs.enqueue.unfinished_parents", COPY, "a parent that is not finished defers the job (allow_dependency_failures is not offered)", "870dcd5fb958"),
    Reach("rq.results.Result.fetch_latest", "service.jobs.describe.describe_many", COPY, "XREVRANGE COUNT 1 of many jobs in one pipeline, through Result.restore", "7623e39a6aac"),
    Reach("rq.job.Job.cancel", "service.schedules.runs.Firing.run", COPY, "fire.lua's cancel_other: status canceled, out of the lane and registries, canceled registry", "226071baca07"),
    Reach("rq.command.send_stop_job_command", "service.schedules.runs.Firing.run", COPY, "fire.lua's cancel_other publishes RQ's stop-job command for a running job", "1c944c461d59"),
    # -- batches: every path that stores a job's end counts it in the same transaction ------------------
    Reach("rq.worker.base.BaseWorker.handle_job_success", "service.workers.worker.ServiceWorker.cleanup_execution", RELY, "calls cleanup_execution inside its success MULTI: a non-plain success's batch count rides there", "9dda7c7d3ca1"),
    Reach("rq.job.Job.cancel", "service.jobs.operations.cancel", RELY, "given our MULTI pipeline it buffers its writes there and does not execute it; its status read uses the job's own client", "226071baca07"),
    Reach("rq.job.Job.delete", "service.dashboard.records.DashboardJob.delete", OVERRIDE, "super() with our pipeline (it buffers, does not execute), plus the batch count", "1a15005871aa"),
    Reach("rq.queue.Queue.empty", "service.dashboard.records.DashboardQueue.empty", OVERRIDE, "super() once the lane's batch jobs are counted canceled", "4f75cf0722d5"),
    # -- key names and prefixes written or read by our code ---------------------------------------------
    Reach("rq.worker.base.BaseWorker.redis_worker_namespace_prefix", "service.core.keys.WORKER_PREFIX", KEY, "'rq:worker:'", "df9730424ad6"),
    Reach("rq.queue.Queue.redis_queue_namespace_prefix", "service.core.keys.QUEUE_PREFIX", KEY, "'rq:queue:'", "328e6a8241d4"),
    Reach("rq.job.Job.redis_job_namespace_prefix", "service.core.keys.JOB_PREFIX", KEY, "'rq:job:'", "e8a5a4b617da"),
    Reach("rq.job.Job.redis_job_namespace_prefix", "service.ops.gauges.oldest_enqueued_at", KEY, "'rq:job:' and its enqueued_at field", "e8a5a4b617da"),
    Reach("rq.job.Job.redis_job_namespace_prefix", "service.dashboard.schedules.last_statuses", KEY, "'rq:job:' and its status field", "e8a5a4b617da"),
    Reach("rq.queue.Queue.redis_queue_namespace_prefix", "service.ops.gauges.read", KEY, "'rq:queue:'", "328e6a8241d4"),
    Reach("rq.executions.WORKER_EXECUTIONS_KEY_TEMPLATE", "service.workers.claim.Claimer.claim", KEY, "'rq:worker:{}:executions'", "bbf602ba6ff2"),
    Reach("rq.worker_registration.REDIS_WORKER_KEYS", "service.ops.gauges.read", KEY, "'rq:workers'", "8c9e41e96715"),
    Reach("rq.defaults.RQ_KEY_PREFIX", "service.schedules.runs.Firing.run", KEY, "'rq' (RQ_KEY_PREFIX); claim, metrics and the dashboard still write 'rq:' literally", "bdae632fcb32"),
    Reach("rq.suspension.WORKERS_SUSPENDED", "service.workers.heartbeat.Heartbeat.beat", KEY, "'rq:suspended', set by `rq suspend`", "e9e3afd85401"),
    Reach("rq.command.PUBSUB_CHANNEL_TEMPLATE", "service.schedules.runs.Firing.run", KEY, "'rq:pubsub:%s'", "7b5e7301b12b"),
    # -- rq-scheduler ------------------------------------------------------------------------------------
    Reach("rq_scheduler.scheduler.Scheduler.acquire_lock", "service.schedules.scheduler.ServiceScheduler.acquire_lock", OVERRIDE, "an owner-token lease on the same key", "8b46b9f3b65c"),
    Reach("rq_scheduler.scheduler.Scheduler.remove_lock", "service.schedules.scheduler.ServiceScheduler.remove_lock", OVERRIDE, "the lease is kept across passes", "ec1be900d00f"),
    Reach("rq_scheduler.scheduler.Scheduler.enqueue_jobs", "service.schedules.scheduler.ServiceScheduler.enqueue_jobs", OVERRIDE, "fires schedules, then super() for stock rq-scheduler jobs", "662787c318e2"),
    Reach("rq_scheduler.scheduler.Scheduler.run", "service.schedules.scheduler.ServiceScheduler.run", OVERRIDE, "our loop: lease, wake-ups, outages", "5f8c20257b06"),
    Reach("rq_scheduler.scheduler.Scheduler._install_signal_handlers", "service.schedules.scheduler.ServiceScheduler._install_signal_handlers", PRIVATE, "our handlers; only our run() calls it", "a6bbc1a03f8c"),
    Reach("rq_scheduler.scheduler.Scheduler.__init__", "service.schedules.scheduler.ServiceScheduler", RELY, "sets _interval, key, scheduled_jobs_key; register_birth/heartbeat use the interval for the instance TTL", "09bb02a2d2f1"),
    Reach("rq_scheduler.scheduler.Scheduler.get_jobs_to_queue", "service.schedules.scheduler.ServiceScheduler.get_jobs_to_queue", OVERRIDE, "stock jobs due by Redis's clock (TIME), not the host's utcnow()", "021076eda338"),
    Reach("rq_scheduler.scheduler.Scheduler.get_queue_for_job", "service.schedules.scheduler.ServiceScheduler.get_queue_for_job", OVERRIDE, "always our queue class: meta['queue_class_name'] of a stock rq-scheduler job is never imported", "ac39045d3c05"),
    Reach("rq_scheduler.scheduler.Scheduler.scheduler_lock_key", "service.core.keys.SCHEDULER_LOCK_KEY", KEY, "'rq:scheduler_lock'", "5d17e83f0c53"),
    Reach("rq_scheduler.scheduler.Scheduler.scheduled_jobs_key", "service.core.keys.ScheduleKeys.due", KEY, "'rq:scheduler:scheduled_jobs'; schedules sit beside it", "9fa3659c179c"),
    # -- rq-dashboard (owned by service.dashboard) -------------------------------------------------------
    Reach("rq_dashboard.web.Config", "service.dashboard.mount.init_app", PATCH, "web.config.serializer = JSONSerializer (Job.fetch in job_info, Queue(...) in the job lists)", "c7a42e82dbbd"),
    Reach("rq_dashboard.web.push_rq_connection", "service.dashboard.mount.init_app", PATCH, "web.from_url replaced: every request gets the app's one client", "2f4d44aa83a8"),
    Reach("rq_dashboard.web.setup_rq_connection", "service.dashboard.mount.init_app", PATCH, "called once at mount, through the replaced from_url", "5f5ba534017c"),
    Reach("rq_dashboard.web.list_workers", "service.dashboard.mount.init_app", RELY, "workers.json: Worker.all without a serializer, so a running JSON job's call string is unpickled", "c1718df5ebcc"),
    Reach("rq_dashboard.web.inject_interval", "service.dashboard.schedules.schedules_page", RELY, "a blueprint-scoped context processor: our schedules page must pass poll_interval itself", "05618608aa5c"),
    Reach("rq_dashboard.web.queues_overview", "service.dashboard.schedules.schedules_page", RELY, "the endpoint name our navbar links to", "3debcdb084d4"),
    Reach("rq_dashboard.web.serialize_queues", "service.dashboard.seam.serialize_queues", PATCH, "wrapped: each queue row gets `groups` (fair share); its rows are dicts with `name`", "7fe9d44d5633"),
    Reach("rq_dashboard:templates/rq_dashboard/queues.html", "service/dashboard/templates/rq_dashboard/queues.html", COPY, "a full copy plus a Groups column: shadows upstream's queues page", "df57de14c3a1"),
    Reach("rq_dashboard:templates/rq_dashboard/job.html", "service/dashboard/templates/rq_dashboard/job.html", COPY, "a full copy plus a Progress line: shadows upstream's job page", "d9de753e9d82"),
    Reach("rq_dashboard:templates/rq_dashboard/navbar.html", "service/dashboard/templates/rq_dashboard/navbar.html", COPY, "a full copy plus a Schedules link: shadows upstream's navbar", "a4723e800d40"),
)
# fmt: on


# -- process-wide patches of RQ ------------------------------------------------------------------

_RESOLVED: dict[Any, Any] = {}


def resolve_serializer_once(serializer: Any = None) -> Any:
    """RQ's resolve_serializer, remembered per serializer.

    RQ resolves the serializer in every Job, Queue, Result and registry it
    builds, and its isinstance check against a runtime Protocol costs tens of
    microseconds each time: several times per job on every path. The answer
    for a given serializer never changes, so it is worked out once.
    """
    try:
        return _RESOLVED[serializer]
    except KeyError:
        resolved = _RESOLVED[serializer] = resolve_serializer(serializer)
        return resolved
    except TypeError:  # an unhashable serializer object: not remembered
        return resolve_serializer(serializer)


def parse_rq_date(value: bytes | str) -> datetime:
    """RQ's str_to_date for its own timestamps ('2026-01-02T03:04:05.123456Z'), without strptime.

    Restoring a job parses up to five timestamps, and strptime is most of a
    restore's time; any other shape still goes through RQ's parser.
    """
    text = value.decode() if isinstance(value, bytes) else value
    rq_shape = isinstance(text, str) and len(text) == 27 and text[10] == "T" and text[19] == "." and text[26] == "Z"
    if rq_shape and text[20:26].isdigit():
        return datetime.fromisoformat(text[:26]).replace(tzinfo=UTC)
    return str_to_date(value)


# Every RQ module that imports rq.utils' `now` or `current_timestamp` by name.
RQ_CLOCK_MODULES = (
    rq.executions, rq.intermediate_queue, rq.job, rq.queue, rq.rate_limit, rq.registry, rq.repeat, rq.results,
    rq.scheduler, rq.worker.base, rq.worker.worker_classes,
)  # fmt: skip


def patch_rq() -> None:
    """Install the patches above into RQ's modules (idempotent); every process does it by importing the job model.

    RQ reads the host's clock; patched, it reads service.core.clock, which is
    the host's clock until the process learns Redis's (workers do at start).
    """
    for module in (rq.job, rq.queue, rq.registry, rq.results):
        module.resolve_serializer = resolve_serializer_once  # type: ignore[attr-defined]
    rq.job.str_to_date = parse_rq_date  # type: ignore[attr-defined]
    for module in RQ_CLOCK_MODULES:
        if hasattr(module, "now"):
            module.now = clock.utcnow  # type: ignore[attr-defined]
        if hasattr(module, "current_timestamp"):
            module.current_timestamp = clock.timestamp  # type: ignore[attr-defined]


# -- the version check at process start ------------------------------------------------------------


def version_warnings(installed: dict[str, str | None] | None = None) -> list[str]:
    """One message per installed library whose release is not the one checked (missing ones are not ours to judge)."""
    if installed is None:
        installed = {name: _installed(name) for name in CHECKED}
    return [
        f"{name} {version} is installed, but the service's use of its internals was checked against "
        f"{name} {CHECKED[name]} only (service/core/compat.py): run the parity tests before trusting it "
        "(docs/upgrading-rq.md)"
        for name, version in installed.items()
        if version is not None and version != CHECKED[name]
    ]


def check_versions() -> bool:
    """Log a warning for each library release that was not checked; True when all are the checked ones."""
    warnings = version_warnings()
    for message in warnings:
        log.warning(message)
    return not warnings


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None

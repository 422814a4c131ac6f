"""Workers: RQ's worker as the service runs it: no loss window, warm shutdown, crash and outage safe.

ServiceWorker extends rq.worker.Worker and keeps RQ's job model (statuses,
registries, executions, results, retries, dependents, callbacks), so RQ's
tools and the dashboard see ordinary RQ state. It replaces what loses or
fails jobs:

- dequeue: an atomic Lua claim into a per-worker list (service.workers.claim),
  strict or weighted lane order, doorbell wake-ups instead of BLPOP on lanes;
- execution: in the worker process (`fork=False`, fast) or in a work horse
  per job (`fork=True`, isolated), forked by a fork server (service.workers.forkserver);
- warm shutdown with a grace period, then requeue at the front (service.workers.shutdown);
- crash recovery through a heartbeat thread and a reaper (service.workers.reaper);
- Redis outages: every Redis step backs off and retries; a job's outcome is
  stored once Redis is back; nothing exits (service.core.outage);
- per-task concurrency and rate limits (service.workers.limits);
- a backlog of short jobs run several to a Redis call, within hard bounds (service.workers.prefetch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.timeouts import JobTimeoutException
from rq.utils import utcformat
from rq.worker import Worker, WorkerStatus

from service.core import clock, keys, metrics
from service.core.connection import connect, connect_like
from service.core.keys import held_groups_key, waiting_key
from service.core.lanes import LANES
from service.core.outage import REDIS_DOWN, Outage, refuses_writes, unavailable
from service.jobs import batches
from service.jobs.damage import is_job_id
from service.jobs.model import CompactJSON, ServiceJob, ServiceQueue
from service.ops import hooks
from service.workers import limits, poison
from service.workers.claim import NOT_CLAIMED, Claim, Claimer, LaneOrder
from service.workers.delayed import start_delayed_jobs
from service.workers.finish import Finisher, encode_result, is_plain
from service.workers.forkserver import ForkServer, ForkServerGone
from service.workers.heartbeat import Heartbeat
from service.workers.limits import Limiter
from service.workers.prefetch import MAX_PREFETCH, Outcome, Prefetch, Running
from service.workers.reaper import CRASHES_FIELD, DEFAULT_CRASH_RETRIES, Reaper
from service.workers.shutdown import (
    DEFAULT_GRACE_SECONDS,
    INTERRUPT_SIGNAL,
    GraceTimer,
    ShutdownImminent,
    interrupt_main_thread,
    interrupt_process,
)

log = logging.getLogger("service.worker")


class JobStopped(BaseException):
    """Raised inside a running job (no-fork mode) when a stop was requested for it (API cancel)."""


# Production timings: heartbeat every 5 s, dead after 20 s without one, reaper
# every 10 s: a killed worker's job is back in its lane within 30 s.
DEFAULT_HEARTBEAT_SECONDS = 5.0
# An idle worker wakes at least this often (doorbell timeout) to check stop
# requests and promote held-back jobs.
IDLE_WAKE_SECONDS = 1.0
# A lane one of whose keys holds another Redis type (a record planted in Redis) is skipped this long, then
# tried again: the worker's other lanes go on, and the warning naming the key comes once per period.
PLANTED_LANE_SKIP_SECONDS = 60.0
# RQ's scheduler child (delayed jobs, retries) exits on a Redis error and RQ
# starts it again only at its 10-minute maintenance: we look this often.
SCHEDULER_CHECK_SECONDS = 5.0
# How long a horse may take to unwind after the grace interrupt before SIGKILL.
HORSE_UNWIND_SECONDS = 3.0
# A pipe holds 64 KiB; a larger outcome is stored by the horse itself.
OUTCOME_PIPE_BYTES = 60_000
# A failure's traceback is stored with at most this many characters from each end.
EXC_STRING_KEEP = 16_000
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class WorkerOptions:
    """Everything worker.py's options decide, passed whole to each (pooled) worker."""

    lanes: tuple[str, ...]
    weights: dict[str, int] | None = None
    fork: bool = False
    burst: bool = False
    max_jobs: int | None = None
    max_memory_mb: int | None = None
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    crash_retries: int = DEFAULT_CRASH_RETRIES
    prefetch: int = MAX_PREFETCH
    with_scheduler: bool = True
    name: str | None = None
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)


class ServiceWorker(Worker):
    """An RQ worker that runs ServiceJobs from ServiceQueues and never loses one."""

    job_class = ServiceJob
    queue_class = ServiceQueue

    def __init__(self, queues: Any, *, options: WorkerOptions | None = None, **kwargs: Any) -> None:
        options = options or WorkerOptions(lanes=())
        kwargs.setdefault("job_class", ServiceJob)
        kwargs.setdefault("queue_class", ServiceQueue)
        kwargs.setdefault("serializer", CompactJSON)
        kwargs.setdefault("name", options.name)
        super().__init__(queues, **kwargs)
        self.options = options
        self.fork = options.fork
        self.crash_retries = options.crash_retries
        self.heartbeat_ttl = options.heartbeat_seconds * 4
        self.lane_names = [q.name for q in self.queues]
        self._queues_by_name = {q.name: q for q in self.queues}
        self.order = LaneOrder(self.lane_names, options.weights)
        self.claimer = Claimer(self.connection, self.name)
        self.limiter = Limiter(self.connection)
        self.finisher = Finisher(self.connection, self.name, self.key, self.claimer)
        # Prefetch needs the job in this process (no fork).
        self.prefetch = Prefetch(self._past_bound, 0 if options.fork else options.prefetch)
        self.reaper = Reaper(self.connection, crash_retries=options.crash_retries)
        self.outage = Outage(log, f"Worker {self.name}")
        self.grace = GraceTimer(options.grace_seconds, self._interrupt_job)
        self.running_lane: str | None = None
        self.restart_reason: str | None = None
        self._job_running = False
        self._horse_died: int | None = None
        self._resync = True
        self._skipped: dict[str, float] = {}  # lanes holding a planted key: skipped until then (monotonic)
        self._heartbeat: Heartbeat | None = None
        self._outcome_fd: int | None = None  # in a horse: where a plain success goes
        self._forkserver: ForkServer | None = None
        self._claim: Claim | None = None
        # What the last success's call claimed, to run next (NOT_CLAIMED: claim on the next turn).
        self._claimed_next: Claim | float | None | bytes | Exception = NOT_CLAIMED
        self._completed = 0  # jobs run since work() began
        # RQ's execution records of the running job are written by the heartbeat at its first beat during
        # the job (service.workers.heartbeat), under this lock, so that no beat writes them once it ended.
        self.records_lock = threading.Lock()
        self.recording: Execution | None = None  # the execution the heartbeat may write the records of
        self.recorded: set[str] = set()  # executions whose records it wrote
        self._max_jobs = options.max_jobs
        self._horse_outcome = b""
        self._next_scheduler_check = 0.0
        self.suspended = False  # `rq suspend` is in force (read by the heartbeat thread)

    # -- connection -------------------------------------------------------

    def _set_connection(self, connection: Redis) -> Redis:
        # RQ raises the socket timeout above its long blocking dequeue (415 s
        # by default: a frozen Redis then hangs the worker that long). Our
        # blocking waits are short, so the client's own timeouts stay.
        return connection

    def serialize(self) -> dict[str, Any]:
        # RQ registers a worker's hash without its state and sets the state a
        # moment later; a reader in between saw state '?'. Register it started.
        data = super().serialize()
        data["state"] = (
            WorkerStatus.STARTED.value if self._state == "starting" else getattr(self._state, "value", self._state)
        )
        return data

    # -- the loop -----------------------------------------------------------

    def work(
        self, burst: bool = False, logging_level: str | None = None, max_jobs: int | None = None, **_: Any
    ) -> bool:
        """Claim and run jobs until stopped (or, in burst mode, until the lanes are empty)."""
        if self.fork:  # before any thread starts: the server forks every horse from this image
            self._forkserver = ForkServer(self._run_horse)
            self._forkserver.start()
        self._until_redis(lambda: clock.sync(self.connection))  # Redis's clock before anything is stamped
        self._until_redis(lambda: self.bootstrap(logging_level or self.options.log_level))
        if self.options.with_scheduler:
            self._until_redis(lambda: self._start_scheduler(burst, logging_level or self.options.log_level))
        self._install_signal_handlers()
        self._heartbeat = Heartbeat(
            self,
            connect_like(self.connection),
            interval=self.options.heartbeat_seconds,
            ttl=self.heartbeat_ttl,
            reap_every=self.options.heartbeat_seconds * 2,
        )
        self._until_redis(self._heartbeat.beat)  # alive before the first claim
        self._heartbeat.start()
        self._completed = 0
        self._max_jobs = max_jobs or self.options.max_jobs
        try:
            while not self._stop_requested:
                outcome = self._turn(burst)
                if outcome in ("empty", "stop"):
                    break
                if outcome == "ran":
                    self._completed += 1
                    if self._should_restart(self._completed, self._max_jobs):
                        break
        finally:
            self._teardown()
        return bool(self._completed)

    def _turn(self, burst: bool) -> str:
        """One step, riding out Redis (down, frozen, full, MISCONF) and bugs; as _step, or 'retry' or 'stop'."""
        try:
            outcome = self._step(burst)
        except StopRequested:
            return "stop"
        except Exception as exc:  # a bug must not take the worker down; its claims go back
            self._resync = True  # our claims go back, the next one's too
            if unavailable(exc):
                self.outage.down(exc)
            elif not (isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE") and self._skip_planted()):
                log.exception("Worker %s: unexpected error; carrying on", self.name)
                time.sleep(1.0)
            return "retry"
        self.outage.up()
        return outcome

    def _step(self, burst: bool) -> str:
        """One turn of the loop: claim and run one job, or wait; return 'ran', 'idle' or 'empty'."""
        if self._resync:
            self._resync_claims()
        result = self._take_claimed_next()
        if isinstance(result, Claim):  # the last success's call claimed it: run it now
            return "ran" if self._run_claim(result) else "idle"
        if self.suspended:  # seen by the heartbeat: wait for `rq resume` (or a stop) as RQ's worker does
            self.check_for_suspension(burst)
            self.suspended = False
            if self._stop_requested:
                return "idle"
        if self.should_run_maintenance_tasks:
            self._maintain()
        elif not burst and self._scheduler_gone():
            self.scheduler.acquire_locks(auto_start=True)  # type: ignore[union-attr]
        if result is NOT_CLAIMED:
            result = self._next_claim()
        if isinstance(result, Claim):
            return "ran" if self._run_claim(result) else "idle"
        if burst and result is None:
            return "empty"
        timeout = IDLE_WAKE_SECONDS if result is None else min(IDLE_WAKE_SECONDS, max(0.01, result - clock.now()))
        self._wait(timeout)
        return "idle"

    def _resync_claims(self) -> None:
        """After an error: what waits is stored (jobs that ran are not run again), then our claims go back."""
        self._store_waiting()
        self._unstart_next()  # if any, it is in our claimed list: it goes back too
        self._forget_prefetched()  # likewise
        self._requeue_own_claims()
        self._resync = False

    def _unstart_next(self) -> None:
        """The job the last call claimed to run next will not run now (an error, a stop): if the call started it,
        it leaves the started registry (it goes back to its lane with our other claims)."""
        following, self._claimed_next = self._claimed_next, NOT_CLAIMED
        if isinstance(following, Claim) and following.execution_id:
            self.connection.zrem(keys.started_key(following.lane), f"{following.job_id}:{following.execution_id}")

    def _next_claim(self) -> Claim | float | None:
        """A job prefetched by the last call and not run yet, else a claim from the lanes in this turn's order."""
        if self.prefetch.claims:
            return self.prefetch.claims.popleft()
        result = self._claim_from(self._usable(self.order.next()))
        self._state = WorkerStatus(self.claimer.state or self._state)  # the call wrote it if it changed
        return result

    def _claim_from(self, lanes: list[str]) -> Claim | float | None:
        """A claim from `lanes`; None (nothing to claim) when every lane is skipped for a planted key."""
        if not lanes:
            return None
        return self._prefetched(self.claimer.claim(lanes, self.get_heartbeat_ttl(None), self._prefetch_size()))

    def _prefetch_size(self) -> int:
        """How many jobs the next claim prefetches (never past --max-jobs)."""
        return self.prefetch.size(self._max_jobs - self._completed - 2 if self._max_jobs else None)

    def _prefetched(self, claimed: Any) -> Any:
        """`claimed` as a call answered it; the jobs prefetched with it wait their turn, charged to the weighted
        order as turns of the lane its call preferred (a batch of n + 1 jobs is n + 1 turns)."""
        if isinstance(claimed, Claim) and claimed.more:
            self.order.charge(self.order.preferred, len(claimed.more))
            for more in claimed.more:
                more.turn = self.order.preferred
            self.prefetch.claims.extend(claimed.more)
            claimed.more = []
        return claimed

    def _forget_prefetched(self) -> None:
        """The prefetched jobs not run yet leave our hands (given back, or put back with our claims): the turns
        they were charged are refunded, so a lane whose batches overrun the bound still gets its share."""
        for claim in self.prefetch.claims:
            self.order.charge(claim.turn, -1)
        self.prefetch.claims.clear()

    def _wait(self, timeout: float) -> None:
        """Wait for a doorbell of the lanes not skipped (or just the timeout, when every lane is)."""
        lanes = self._usable(self.lane_names)
        if lanes:
            self.claimer.wait(lanes, timeout)
        else:
            time.sleep(timeout)

    def _usable(self, lanes: list[str]) -> list[str]:
        """`lanes` without those skipped for a planted key (see _skip_planted)."""
        if not self._skipped:
            return lanes
        now = time.monotonic()
        self._skipped = {lane: until for lane, until in self._skipped.items() if until > now}
        return [lane for lane in lanes if lane not in self._skipped]

    def _skip_planted(self) -> bool:
        """After a WRONGTYPE: skip each lane with a key of another type for a while, naming the key; True if
        a planted key was found. One key of the worker's own stops it until repaired (it retries each second)."""
        wrong = self.claimer.planted(self.lane_names)
        for lane, found in wrong.items():
            if lane:
                self._skipped[lane] = time.monotonic() + PLANTED_LANE_SKIP_SECONDS
                log.warning(
                    "Worker %s: lane %r skipped for %.0f s, its other lanes go on: %s (delete or repair it)",
                    self.name, lane, PLANTED_LANE_SKIP_SECONDS, "; ".join(found),
                )  # fmt: skip
            else:
                log.error("Worker %s: %s (delete or repair it); retrying each second", self.name, "; ".join(found))
                time.sleep(1.0)
        return bool(wrong)

    def _take_claimed_next(self) -> Claim | float | None | bytes:
        """What the last success's call claimed (NOT_CLAIMED: nothing yet); its claim's error is raised here,
        as a claim call's own would be."""
        result, self._claimed_next = self._claimed_next, NOT_CLAIMED
        if isinstance(result, Exception):
            raise result
        return result

    def _maintain(self) -> None:
        """RQ's registry maintenance; if an entry breaks it (a planted id), it waits for its next round."""
        try:
            self.run_maintenance_tasks()
        except (*REDIS_DOWN, StopRequested):
            raise
        except Exception as exc:
            if refuses_writes(exc):
                raise
            log.exception("Worker %s: registry maintenance failed; next try in %s s", self.name,
                          self.maintenance_interval)  # fmt: skip
            self.last_cleaned_at = clock.utcnow()

    def _start_scheduler(
        self, burst: bool = False, logging_level: Any = "INFO", date_format: str = "", log_format: str = ""
    ) -> None:
        """Start RQ's scheduler child for delayed jobs, as service.workers.delayed runs it."""
        start_delayed_jobs(self, burst, logging_level, date_format or DEFAULT_LOGGING_DATE_FORMAT,
                           log_format or DEFAULT_LOGGING_FORMAT)  # fmt: skip

    def _scheduler_gone(self) -> bool:
        """True (at most every SCHEDULER_CHECK_SECONDS) when no RQ scheduler child of ours is running.

        After a Redis outage or a Sentinel failover it has exited; if another
        worker's holds the lanes' locks, acquire_locks() starts nothing.
        """
        if self.scheduler is None or time.monotonic() < self._next_scheduler_check:
            return False
        self._next_scheduler_check = time.monotonic() + SCHEDULER_CHECK_SECONDS
        process = self.scheduler._process
        return process is None or not process.is_alive()

    def _run_claim(self, claim: Claim) -> bool:
        """Run a claimed job (or put it aside); True when it ran.

        Whatever the lane or the job hash holds, the claim ends here: an id no
        job can have is discarded, and a job that cannot be loaded, run or
        finished fails alone with the reason (service.workers.poison).
        """
        if not is_job_id(claim.job_id):
            poison.discard(self.connection, self.claimer.key, claim.job_id, claim.lane, claim.execution_id, self.name)
            return False
        try:
            return self._run_loaded(claim)
        except (*REDIS_DOWN, StopRequested):
            raise
        except Exception as exc:
            if refuses_writes(exc):  # the job is not at fault: it stays claimed and goes back (resync)
                raise
            log.exception("Worker %s: job %s could not be run or its outcome stored", self.name, claim.job_id)
            reason = f"{type(exc).__name__}: {exc}"
            poison.fail(self.connection, self.claimer.key, claim.job_id, claim.lane, reason, claim.execution_id,
                        self.name)  # fmt: skip
            self.executions.pop(claim.execution_id or "", None)
            return True

    def _run_loaded(self, claim: Claim) -> bool:
        if not claim.raw:
            self.claimer.drop(claim.job_id)  # deleted while queued
            return False
        job = self.load(claim.job_id, claim.lane, claim.raw)
        attempts = None  # a prefetched job started here, without a call: its attempts once started
        if claim.prefetched:
            claim, job, attempts = self._start_prefetched(claim, job)
        if claim.execution_id is None:
            if job.damage:
                self._fail_unstarted(job, claim)
            else:  # canceled, already ended, or a duplicate id of a job running elsewhere
                log.warning("Worker %s: job %s is %s, not queued; dropped", self.name, job.id, job.get_status(False))
                self.claimer.drop(claim.job_id)
            return False
        execution = Execution(claim.execution_id, job.id, self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = datetime.fromtimestamp(claim.at, UTC)
        self.executions[execution.id] = execution
        if attempts is not None:  # as the claim would have stored it
            job._status, job.worker_name, job.attempts = JobStatus.STARTED, self.name, attempts
        if self._held_back(job, claim, execution):
            return False
        self._track(claim, execution, attempts)
        try:
            self.execute_job(job, self._queues_by_name[claim.lane])
        finally:
            self.running_lane, self._claim = None, None
            with self.prefetch.lock:  # ended without a stored success (a bug's exception): nothing waits on it
                running = self.prefetch.running
                if running is not None and running.execution is execution:
                    self.prefetch.running = None
            if self._stop_recording(execution):  # written, and not removed by a plain success's call
                self._forget_records(execution)
        following = self._claimed_next
        next_started = isinstance(following, Claim) and (following.execution_id or following.prefetched)
        if self._state != WorkerStatus.IDLE and not next_started:  # a plain success's call already set it
            self.set_state(WorkerStatus.IDLE)
        return True

    def _track(self, claim: Claim, execution: Execution, attempts: int | None) -> None:
        """The job of `claim` runs now (`attempts`: started here, without a call); the watchdog's bound covers its
        start (if not stored yet) and the prefetched jobs behind it, the heartbeat its records (once started)."""
        with self.prefetch.lock:
            self.prefetch.begin_job()
            if attempts is not None or self.prefetch.claims:
                started_at, state = utcformat(execution.created_at), "started" if attempts is None else "deferred"
                self.prefetch.begin(Running(claim, execution, started_at, attempts or 0, state))
        self.running_lane, self._claim = claim.lane, claim
        self._state = WorkerStatus.BUSY  # written by the work script's claim
        if attempts is None:
            with self.records_lock:
                self.recording = execution  # the heartbeat writes its records if it still runs at the next beat

    def _held_back(self, job: ServiceJob, claim: Claim, execution: Execution) -> bool:
        """True when the job is over one of its task's limits: then it waits, held back (see _hold_back)."""
        spec = job.spec
        if spec is None or not limits.is_limited(spec, job.group) or job.damage:
            return False
        timeout = float(job.timeout or spec.timeout_seconds)
        wait, group_held = self.limiter.acquire(spec, job.id, timeout, job.group)
        if wait > 0:
            self._hold_back(job, claim.lane, execution, wait, job.group if group_held else None)
        return wait > 0

    def _start_prefetched(self, claim: Claim, job: ServiceJob) -> tuple[Claim, ServiceJob, int | None]:
        """A prefetched job about to run, and its attempts once started when it starts here without a call
        (recent jobs were short: its start is stored with its outcome, or by the watchdog past the bound);
        else it is marked started by a call that stores what waits too (attempts None), and loaded again."""
        if job.damage:  # it fails alone, as a damaged job a claim took does (what waits is stored first)
            self._store_waiting()
            return claim, job, None
        spec = job.spec
        attempts = claim.raw.get(b"attempts", b"0")
        fast = (
            spec is not None
            and not limits.is_limited(spec, job.group)
            and job.get_status(refresh=False) == JobStatus.QUEUED
            and attempts.isdigit()
        )
        with self.prefetch.lock:
            if fast and self.prefetch.short():
                now = clock.now()
                self.claimer.observe_wait(claim.raw, claim.lane, now)
                return Claim(claim.job_id, claim.lane, claim.raw, uuid.uuid4().hex, now), job, int(attempts) + 1
            parts = [outcome.part for outcome in self.prefetch.pending]
            dependents, claimed = self.claimer.start(claim, self.get_heartbeat_ttl(None), finish=parts)
            self._after_stored(self.prefetch.pending, dependents)
            self.prefetch.stored()
        if isinstance(claimed, Exception):
            raise claimed
        assert isinstance(claimed, Claim)
        return claimed, self.load(claimed.job_id, claimed.lane, claimed.raw), None

    def _store_waiting(self) -> None:
        """Store the outcomes that wait and mark the prefetched job running now started (before a failure, a
        retry or any outcome but a plain success is stored, at a resync, at exit); one call, if any waits."""
        with self.prefetch.lock:
            running = self.prefetch.running
            if running is not None and running.state != "deferred":
                running = None
            if not self.prefetch.pending and running is None:
                return
            parts = [outcome.part for outcome in self.prefetch.pending]
            claimed: Any = None
            if running is None:
                dependents = self.claimer.flush(parts)
            else:
                ttl = self.get_heartbeat_ttl(None)
                dependents, claimed = self.claimer.start(running.claim, ttl, parts, running.started_at,
                                                         running.execution.id)  # fmt: skip
                started = isinstance(claimed, Claim) and claimed.execution_id is not None
                if not isinstance(claimed, Exception):  # else its start failed (a damaged hash): it stays deferred
                    running.state = "started" if started else "gone"
                if started:
                    with self.records_lock:  # the heartbeat writes its records if it still runs at the next beat
                        self.recording = running.execution
            self._after_stored(self.prefetch.pending, dependents)  # stored even when the start failed
            self.prefetch.stored()
            if isinstance(claimed, Exception):
                raise claimed

    def _past_bound(self) -> None:
        """Watchdog thread: a prefetched job runs past the bound. What waits is stored, the job marked started,
        and the rest of its batch put back at the front of its lane for other workers."""
        self._store_waiting()
        self._give_back()
        self.prefetch.stored()

    def _give_back(self) -> None:
        """The prefetched jobs not run yet go back to the front of their lane (the batch is past its bound)."""
        if self.prefetch.claims:
            self.claimer.give_back(self.prefetch.claims)
            self._forget_prefetched()

    def _after_stored(self, outcomes: list[Outcome], dependents: list[int]) -> None:
        """What follows the store of waiting outcomes: their dependents enqueued, their events and logs."""
        for outcome, count in zip(outcomes, dependents, strict=False):
            if count:
                self._enqueue_dependents_safely(outcome.queue, outcome.job)
            hooks.job_event("job.succeeded", outcome.job)
            log_finished(self.name, outcome.job)

    def _stop_recording(self, execution: Execution) -> bool:
        """The heartbeat writes `execution`'s records no more; True when it wrote them."""
        with self.records_lock:
            if self.recording is execution:
                self.recording = None
            return execution.id in self.recorded

    def _forget_records(self, execution: Execution) -> None:
        """Remove the records the heartbeat wrote for an execution that has ended (whatever stored its outcome)."""
        self.recorded.discard(execution.id)
        try:
            with self.connection.pipeline() as pipe:
                pipe.delete(execution.key)
                pipe.zrem(keys.executions_key(execution.job_id), execution.id)
                pipe.srem(self.executions_key, execution.composite_key)
                pipe.execute()
        except REDIS_DOWN:  # they expire (the hash, the registry); RQ drops a set member whose hash is gone
            log.warning("Worker %s: Redis down; the records of execution %s will expire", self.name, execution.id)

    def set_state(self, state: Any, pipeline: Any = None) -> None:
        super().set_state(state, pipeline)
        self.claimer.state = getattr(state, "value", state)  # the work script writes it only when it changes

    def _claims_next(self) -> bool:
        """False when a success's call must not claim the next job right away (stopping, suspended, maintenance
        due, a resync, the last of --max-jobs, a horse, every lane skipped)."""
        return not (
            self._is_horse
            or self._stop_requested
            or self.suspended
            or self._resync
            or self.should_run_maintenance_tasks
            or (self._max_jobs and self._completed + 1 >= self._max_jobs)
            or not self._usable(self.lane_names)
        )

    def load(self, job_id: str, lane: str, raw: dict[bytes, bytes]) -> ServiceJob:
        """The job claimed from `lane` (damaged, not raising, whatever its hash holds)."""
        job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
        job.restore(raw)
        if job.origin != lane:  # the lane it was in is where its outcome goes
            job.damage = "; ".join(filter(None, (job.damage, f"origin is not {lane!r}, the lane it was in")))
            job.origin = lane
        return job

    def _fail_unstarted(self, job: ServiceJob, claim: Claim) -> None:
        """Fail a damaged job that the claim did not start (its status is not queued) with the damage as reason."""
        reason = f"JobDamaged: the stored job is damaged ({job.damage}); not run"
        with self.connection.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            job._handle_failure(reason, pipeline=pipe, worker_name=self.name)
            pipe.lrem(self.claimer.key, 1, job.id)
            metrics.count(pipe, "jobs_failed", job.task_name, claim.lane)
            batches.end(pipe, job.id, job.batch_id, "failed")
            pipe.execute()
        log.error("Worker %s: %s: job %s failed: %s", self.name, claim.lane, job.id, reason[:500])

    def _hold_back(
        self, job: Job, lane: str, execution: Execution, wait_seconds: float, held_group: str | None = None
    ) -> None:
        """Undo the start of a job over a limit and park it in the lane's waiting set (its group held, if
        its group's cap is the limit: the group passes its turns meanwhile)."""
        until = clock.now() + max(wait_seconds, 0.01)
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipe, execution)
            pipe.hset(job.key, "status", JobStatus.QUEUED.value)
            pipe.hincrby(job.key, "attempts", -1)
            pipe.zadd(waiting_key(lane), {job.id: until})
            if held_group:
                pipe.hset(held_groups_key(lane), held_group, until)
            pipe.execute()

    def _requeue_own_claims(self) -> None:
        """Put back whatever our claimed list holds that we are not running (after an outage, at exit), in its
        order: prefetched jobs go back to the front of their lane as they were."""
        for job_id in reversed(self.claimer.claimed()):
            try:
                self._requeue_claim(job_id)
            except (*REDIS_DOWN, StopRequested):
                raise
            except Exception as exc:  # e.g. a key under the id that is not a job hash: it fails alone
                if refuses_writes(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
                poison.fail(self.connection, self.claimer.key, job_id, self.lane_names[0], reason, None, self.name)

    def _requeue_claim(self, job_id: str) -> None:
        if not is_job_id(job_id):
            poison.discard(self.connection, self.claimer.key, job_id, None, None, self.name)
            return
        job = ServiceJob.fetch_many([job_id], connection=self.connection)[0]
        if job is None or job.get_status(refresh=False) in (JobStatus.FINISHED, JobStatus.FAILED):
            self.claimer.drop(job_id)
            return
        if job.damage:  # it can never run (its claim may even have failed on it): no loop, it fails
            lane = job.origin if job.origin in LANES else self.lane_names[0]
            reason = f"JobDamaged: the stored job is damaged ({job.damage}); not run"
            poison.fail(self.connection, self.claimer.key, job_id, lane, reason, None, self.name)
            return
        self.claimer.requeue(job_id, job.origin)
        log.warning("Worker %s: job %s put back at the front of %s", self.name, job_id, job.origin)

    def _should_restart(self, completed: int, max_jobs: int | None) -> bool:
        if max_jobs and completed >= max_jobs:
            self.restart_reason = f"ran {completed} jobs (--max-jobs)"
        elif self.options.max_memory_mb and rss_mb() > self.options.max_memory_mb:
            self.restart_reason = f"memory {rss_mb():.0f} MB over --max-memory-mb {self.options.max_memory_mb}"
        if self.restart_reason:
            log.warning("Worker %s: %s; stopping cleanly to restart", self.name, self.restart_reason)
        return self.restart_reason is not None

    def _teardown(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._forkserver is not None:
            self._forkserver.stop()
        self.prefetch.stop()
        for _ in range(3):
            try:
                self._store_waiting()  # the outcomes that wait, before the prefetched jobs go back
                self.claimer.flush()  # the counters kept since the last call
                self._unstart_next()
                self._requeue_own_claims()
                if not self.claimer.claimed():
                    self.reaper.forget(self.name)
                self.teardown()
                return
            except Exception as exc:
                if not unavailable(exc):
                    raise
                self.outage.down(exc)
        log.error("Worker %s: Redis unreachable or full at exit; the reaper will recover our claimed jobs", self.name)

    def _until_redis(self, step: Any) -> Any:
        """Run `step` until it gets through to Redis (or a stop is requested)."""
        return self.outage.retry(step, stop=lambda: self._stop_requested)

    # -- execution ------------------------------------------------------------

    def execute_job(self, job: Job, queue: Any) -> None:
        execution = self.prepare_execution(job)
        if not self.fork:
            self.perform_job(job, queue, execution)
            return
        self.fork_work_horse(job, queue)
        try:
            self.monitor_work_horse(job, queue, execution)
            outcome = json.loads(self._horse_outcome) if self._horse_outcome else None
        finally:
            if self._horse_pid:
                self.kill_horse(signal.SIGKILL)
                self.wait_for_horse()
                self._horse_pid = 0
        if outcome is not None:  # a plain success: the horse ran it, we store it
            started_at, ended_at = (datetime.fromtimestamp(t, UTC) for t in (outcome["started"], outcome["ended"]))
            job.started_at = started_at
            self._until_redis(lambda: self._store_success(job, queue, execution, outcome["value"], ended_at))

    def fork_work_horse(self, job: Job, queue: Any) -> None:
        """Have the fork server fork a horse for the claimed job (RQ forks the worker itself).

        The horse reports a plain success on a pipe instead of storing it: it
        then needs no Redis connection of its own for most jobs (a new
        connection per fork is most of a forked job's cost); the worker stores
        the outcome in one Lua call, as in no-fork mode.
        """
        claim, execution = self._claim, self.prepare_execution(job)
        assert claim is not None and self._forkserver is not None
        request = (job.id, claim.lane, execution.id, execution.created_at.timestamp(), claim.raw, clock.offset())
        self._horse_outcome = b""
        try:
            self._horse_pid = self._forkserver.submit(request)
        except ForkServerGone:  # no horse was forked: start a new server and ask again
            self._restart_forkserver()
            self._horse_pid = self._forkserver.submit(request)
        if self._stopped_job_id == job.id:  # stopped (API cancel) before we knew the pid
            self.kill_horse()

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """Wait for the fork server's report that the horse ended; keep what the horse shipped.

        If the server itself died, the horse (its orphan) is killed and counts
        as a horse killed by SIGKILL; a new server is started for the next job.
        """
        pid = self._horse_pid
        assert self._forkserver is not None
        try:
            status, self._horse_outcome = self._forkserver.wait()
        except ForkServerGone:
            log.error("Worker %s: fork server exited while horse %s ran; killing the horse", self.name, pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            self._restart_forkserver()
            status, self._horse_outcome = signal.SIGKILL.value, b""
        return pid, status, None

    def _restart_forkserver(self) -> None:
        assert self._forkserver is not None
        self._forkserver.stop()
        self._forkserver.start()

    def _run_horse(self, request: tuple[str, str, str, float, dict[bytes, bytes], float], outcome_fd: int) -> None:
        """In a horse (forked by the fork server): rebuild the claimed job and run it; never returns."""
        job_id, lane, execution_id, created_at, raw, clock_offset = request
        clock.set_offset(clock_offset)  # the fork server was forked before the worker learnt Redis's clock
        self._outcome_fd = outcome_fd
        os.environ["RQ_WORKER_ID"] = self.name
        os.environ["RQ_JOB_ID"] = job_id
        job = self.load(job_id, lane, raw)
        execution = Execution(execution_id, job_id, self.connection, worker_name=self.name)
        execution.created_at = datetime.fromtimestamp(created_at, UTC)
        self.executions = {execution.id: execution}
        self.running_lane = lane
        self.main_work_horse(job, self._queues_by_name[lane])
        os._exit(0)

    def _ship_success(self, job: Job, return_value: Any) -> bool:
        """In the horse: report a plain success to the parent; False if the horse must store it itself."""
        if self._outcome_fd is None or isinstance(return_value, Retry):
            return False
        if not is_plain(job, job.get_result_ttl(self.default_result_ttl)):
            return False
        try:
            started = job.started_at.timestamp() if job.started_at else clock.now()
            payload = json.dumps({"value": return_value, "started": started, "ended": clock.now()}).encode()
        except (TypeError, ValueError):
            return False
        if len(payload) > OUTCOME_PIPE_BYTES:  # fits the pipe: the write never waits for the reader
            return False
        view = memoryview(payload)
        while view:  # a signal may cut a write short
            view = view[os.write(self._outcome_fd, view) :]
        os.close(self._outcome_fd)  # the fork server reports the outcome now, while we exit
        self._outcome_fd = None
        return True

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # The heartbeat thread renews the started-registry entry; it outlives
        # our liveness key by 60 s so that our reaper, not RQ's abandoned-job
        # cleanup, handles a dead worker's job.
        return int(self.heartbeat_ttl) + 60

    def prepare_execution(self, job: Job) -> Execution:
        # The work script's claim already started the job (its records are the heartbeat's, at its first beat).
        return next(e for e in self.executions.values() if e.job_id == job.id)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """Nothing left to do: the claim started the job (one round trip for both)."""

    def perform_job(self, job: Job, queue: Any, execution: Execution) -> bool:
        """Run the job's function, then store its outcome, retrying the store through Redis outages."""
        job.started_at = clock.utcnow()
        timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
        try:
            self._job_running = True
            try:
                with self.death_penalty_class(timeout, JobTimeoutException, job_id=job.id):
                    return_value = job.perform()
            finally:
                self._job_running = False
        except ShutdownImminent:
            self._until_redis(lambda: self.requeue_interrupted(job, queue, execution))
            return False
        except JobStopped:
            exc_info = sys.exc_info()
            self._until_redis(lambda: self._finalize_failure(job, queue, execution, exc_info))
            return False
        except Exception as exc:
            exc_info = sys.exc_info()
            if unavailable(exc):  # Redis went away (or refused the task's writes) under the job
                self._until_redis(lambda: self._redeliver_or_fail(job, queue, execution, exc_info))
            else:
                self._until_redis(lambda: self._finalize_failure(job, queue, execution, exc_info))
            return False
        if self._is_horse and self._ship_success(job, return_value):
            return True
        try:
            self._until_redis(lambda: self._store_success(job, queue, execution, return_value))
        except REDIS_DOWN:
            raise
        except Exception:  # the outcome cannot be stored (a result not JSON or too large...): a failure
            exc_info = sys.exc_info()
            self._until_redis(lambda: self._finalize_failure(job, queue, execution, exc_info))
            return False
        return True

    def _store_success(
        self, job: Job, queue: Any, execution: Execution, return_value: Any, ended_at: datetime | None = None
    ) -> None:
        """Store the outcome: one Lua call for a plain job, RQ's own path otherwise."""
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if isinstance(return_value, Retry) or not is_plain(job, result_ttl):
            self._store_waiting()  # RQ's path stores this outcome: the job is marked started first
            if result_ttl != 0 and not isinstance(return_value, Retry):
                encode_result(job.serializer, return_value)
            ends = not isinstance(return_value, Retry) and not job.repeats_left
            job.batch_outcome = "finished" if ends else None  # counted in RQ's success transaction
            self._finalize_success(job, queue, execution, return_value)
            self._count_outcome(job, "jobs_retried" if isinstance(return_value, Retry) else "jobs_finished")
            hooks.job_event("job.retried" if isinstance(return_value, Retry) else "job.succeeded", job)
            log_finished(self.name, job)
            return
        job.ended_at = ended_at or clock.utcnow()
        job._result = return_value
        self._store_plain(job, queue, execution, result_ttl)

    def _store_plain(self, job: Job, queue: Any, execution: Execution, result_ttl: int) -> None:
        """A plain success: kept for the next call while a batch of prefetched jobs runs within its bound, else
        stored with what waits in one work script call that claims (or starts) the next job."""
        spec = job.spec
        slot_key = limits.running_key(spec.name) if spec is not None and spec.concurrency else limits.NO_SLOT
        slots = (slot_key, limits.group_slot_key(spec, job.group), job.group or "")
        claims_next = self._claims_next()
        recorded = self._stop_recording(execution)
        ttl = self.get_heartbeat_ttl(None)
        with self.prefetch.lock:
            running = self.prefetch.running
            if running is not None and running.execution is not execution:
                running = None
            start = (running.started_at, running.attempts) if running and running.state != "started" else None
            batched = bool(getattr(job, "batch_id", None))  # its outcome and its batch's count go in one MULTI
            part = self.finisher.outcome(job, execution, result_ttl, slots, job.task_name, recorded, start)
            if claims_next and not batched and self.prefetch.may_defer():  # stored with the next call
                self._claimed_next = self.prefetch.defer(Outcome(part, job, queue))
                job._status = JobStatus.FINISHED
                self.executions.pop(execution.id, None)
                self.recorded.discard(execution.id)  # removed by the call that stores it
                return
            pending = self.prefetch.pending
            parts = [outcome.part for outcome in pending]
            lanes = self._usable(self.order.next()) if claims_next else []  # a weighted turn only for a claim
            if lanes and self.prefetch.claims:  # past the bound (or not short any more): the rest goes back first
                self._give_back()
            try:
                size = self._prefetch_size()
                dependents, claimed = self.finisher.finish(job, part, lanes, ttl, parts, size)
            except BaseException:
                if lanes:  # its reply lost, the call may have claimed a job: our claims are put back, and the
                    self._resync = True  # retry only stores the outcome
                raise
            self.prefetch.running = None
            self.prefetch.stored()
        self._claimed_next = self._prefetched(claimed)
        # The state the call left (unknown after a failed claim: busy, so that it is written idle).
        job._status, self._state = JobStatus.FINISHED, WorkerStatus(self.claimer.state or WorkerStatus.BUSY)
        self.executions.pop(execution.id, None)
        self.recorded.discard(execution.id)  # removed by the call
        self._after_stored(pending, dependents)
        if dependents[-1]:
            self._enqueue_dependents_safely(queue, job)
        if any(dependents) and not isinstance(self._claimed_next, Claim):  # the lanes were empty before: look again
            self._claimed_next = NOT_CLAIMED
        hooks.job_event("job.succeeded", job)
        log_finished(self.name, job)

    def handle_execution_ended(self, job: Job, queue: Any, heartbeat_ttl: int) -> None:
        # RQ also writes a heartbeat here (one more round trip per job); the
        # heartbeat thread keeps the job's registry entry alive instead, and
        # the job hash gets RQ's last_heartbeat when its outcome is saved.
        job.ended_at = job.last_heartbeat = clock.utcnow()

    def _count_outcome(self, job: Job, counter: str, pipe: Any = None) -> None:
        """Count an execution's outcome and duration in the metrics (in `pipe`, or on its own)."""
        target = pipe if pipe is not None else self.connection.pipeline()
        task, lane = job.task_name, job.origin
        seconds = (job.ended_at - job.started_at).total_seconds() if job.ended_at and job.started_at else 0.0
        metrics.count(target, "jobs_started", task, lane)
        metrics.count(target, counter, task, lane)
        metrics.observe(target, "job_duration_seconds", seconds, task, lane)
        if pipe is None:
            target.execute()

    def requeue_interrupted(self, job: Job, queue: Any, execution: Execution | None) -> None:
        """Put a job stopped by the end of the grace period back at the front of its lane (no retry used)."""
        job.ended_at = job.ended_at or clock.utcnow()
        self._store_waiting()  # the outcomes that wait are stored; this job is marked started, then put back
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipe, execution)
            self._count_outcome(job, "jobs_redelivered", pipe)
            pipe.execute()
        self.claimer.requeue(job.id, job.origin, key=None)
        log.warning("Worker %s: job %s interrupted by shutdown; back at the front of %s", self.name, job.id, job.origin)

    def _redeliver_or_fail(self, job: Job, queue: Any, execution: Execution, exc_info: Any) -> None:
        """A job that failed because Redis went away is redelivered, within the crash allowance."""
        crashes = int(self.connection.hincrby(job.key, CRASHES_FIELD, 1))
        if crashes <= self.crash_retries:
            self.requeue_interrupted(job, queue, execution)
            return
        self._finalize_failure(job, queue, execution, exc_info)

    def cleanup_execution(self, job: Job, pipeline: Any, execution: Execution | None = None) -> None:
        """RQ's cleanup, plus, atomically: leave our claimed list, free the task's slots, and when the
        outcome being stored ends the job (job.batch_outcome), count that end in its batch."""
        super().cleanup_execution(job, pipeline, execution)
        pipeline.lrem(self.claimer.key, 1, job.id)
        limits.release(pipeline, job.spec, job.id, job.group, job.origin)
        outcome, job.batch_outcome = job.batch_outcome, None
        if outcome:
            batches.end(pipeline, job.id, job.batch_id, outcome)

    def handle_job_failure(
        self, job: Job, queue: Any, started_job_registry: Any = None, exc_string: str = "", execution: Any = None
    ) -> None:
        """RQ's failure handling, except that a dead horse is a crash and a store that fails raises (to retry)."""
        if self._horse_died is not None:
            self._handle_horse_death(job, queue, execution)
            return
        retries_left = job.retries_left
        try:
            self._store_waiting()  # RQ's path stores this outcome: the job is marked started first
            self._store_failure(job, queue, clip(exc_string), execution)
        except BaseException:  # nothing was stored (Redis down or full): the retry is taken again on the next try
            job.retries_left = retries_left
            raise

    def _store_failure(self, job: Job, queue: Any, exc_string: str, execution: Any) -> None:
        job_is_stopped = self._stopped_job_id == job.id
        retry = bool(job.should_retry) and not job_is_stopped
        with self.connection.pipeline() as pipe:
            if job_is_stopped:
                job.set_status(JobStatus.STOPPED, pipeline=pipe)
            elif not retry:
                job.set_status(JobStatus.FAILED, pipeline=pipe)
            job.batch_outcome = None if retry else "canceled" if job_is_stopped else "failed"
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            if not retry:
                job._handle_failure(
                    exc_string,
                    pipeline=pipe,
                    worker_name=self.name,
                    execution_id=execution.id if execution else None,
                    execution_started_at=execution.created_at if execution else None,
                    execution_ended_at=job.ended_at,
                )
            self.increment_failed_job_count(pipe)
            if job.started_at and job.ended_at:
                self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            if retry:
                job.retry(queue, pipe)
            self._count_outcome(job, "jobs_retried" if retry else "jobs_failed", pipe)
            pipe.execute()
        error = (exc_string.strip().splitlines() or [""])[-1]
        hooks.job_event("job.retried" if retry else "job.failed", job, error=error)
        if job_is_stopped:
            self._stopped_job_id = None
        if not retry:
            if not job_is_stopped:
                job.send_webhooks(JobStatus.FAILED, exc_string=exc_string)
            self._enqueue_dependents_safely(queue, job)

    # -- fork mode ---------------------------------------------------------------

    def setup_work_horse_signals(self) -> None:
        # The horse ignores SIGTERM/SIGINT (Heroku signals the whole group):
        # only the parent decides when the grace period is over.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(INTERRUPT_SIGNAL, self._on_interrupt)

    def handle_work_horse_killed(self, job: Job, retpid: int, ret_val: int, rusage: Any) -> None:
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        self._horse_died = ret_val or -1

    def _handle_horse_death(self, job: Job, queue: Any, execution: Any) -> None:
        status, self._horse_died = self._horse_died, None
        if self.grace.fired:
            self.requeue_interrupted(job, queue, execution)
            return
        how = (
            f"signal {os.WTERMSIG(status)}" if status and status > 0 and os.WIFSIGNALED(status) else f"status {status}"
        )
        self._until_redis(lambda: self.reaper.recover(job.id, self.claimer.key, f"work horse died ({how})"))

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        """Fork mode, while the horse runs: nothing. The heartbeat thread renews the worker and writes the
        running job's execution records (RQ's would renew an execution hash it has not written yet)."""

    # -- signals and shutdown -----------------------------------------------------

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(INTERRUPT_SIGNAL, self._on_interrupt)
        signal.signal(signal.SIGUSR2, self._on_stop_job)

    def _on_stop_job(self, signum: int, frame: Any) -> None:
        if self._job_running and self._stopped_job_id:
            raise JobStopped("Job stopped by user")

    def request_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM/SIGINT: stop taking jobs; the running one has the grace period. A second signal: now."""
        if self._shutdown_requested_date and (clock.utcnow() - self._shutdown_requested_date).total_seconds() < 1:
            return  # the same shutdown, signalled twice (pool and process group)
        if self._stop_requested:
            log.warning("Worker %s: second stop signal; interrupting the running job now", self.name)
            self.grace.fire()
            return
        self._shutdown_requested_date = clock.utcnow()
        self._stop_requested = True
        busy = self._job_running or self._horse_pid
        log.info(
            "Worker %s: warm shutdown requested (%s)%s",
            self.name,
            signal.Signals(signum).name,
            f"; the running job has {self.grace.grace_seconds:.0f} s to finish" if busy else "",
        )
        self.grace.start()

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        if self._job_running:
            raise ShutdownImminent(f"warm shutdown grace period of {self.grace.grace_seconds:.0f} s is over")

    def _interrupt_job(self) -> None:
        if self.fork and self._horse_pid:
            horse = self._horse_pid
            interrupt_process(horse)
            timer = threading.Timer(HORSE_UNWIND_SECONDS, self._kill_stuck_horse, args=(horse,))
            timer.daemon = True
            timer.start()
        elif self._job_running:
            interrupt_main_thread()

    def _kill_stuck_horse(self, pid: int) -> None:
        if self._horse_pid == pid:
            self.kill_horse(signal.SIGKILL)

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        if isinstance(exc, REDIS_DOWN):
            time.sleep(2.0)  # redis-py resubscribes once Redis is back
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Fork mode: kill the horse. Without fork there is no horse: a stop request (API cancel) is
        raised inside the running job instead (RQ's Worker would signal its own process group)."""
        if self._horse_pid:
            super().kill_horse(sig)
        elif not self._is_horse and self._job_running and self._stopped_job_id:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR2)


def clip(text: str, keep: int = EXC_STRING_KEEP) -> str:
    """`text` cut to its first and last `keep` characters (a traceback's end says what failed)."""
    if len(text) <= 2 * keep:
        return text
    return f"{text[:keep]}\n... [{len(text) - 2 * keep} characters cut] ...\n{text[-keep:]}"


def log_finished(worker_name: str, job: Job) -> None:
    """Log a finished job with its id, task, lane and duration as fields (LOG_FORMAT=json shows them)."""
    started, ended = job.started_at, job.ended_at
    duration_ms = round((ended - started).total_seconds() * 1000, 3) if started and ended else None
    fields = {"job_id": job.id, "task": job.task_name, "queue": job.origin, "duration_ms": duration_ms}
    log.info("Worker %s: %s: job %s (%s) finished in %s ms", worker_name, job.origin, job.id, fields["task"],
             duration_ms, extra=fields)  # fmt: skip


def rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def make_worker(connection: Redis, options: WorkerOptions) -> ServiceWorker:
    """Build a ServiceWorker for `options`, waiting for Redis if it is down at start."""
    queues = [ServiceQueue(lane, connection=connection) for lane in options.lanes]
    return Outage(log, "Worker start").retry(lambda: ServiceWorker(queues, connection=connection, options=options))


def run_worker(redis_url: str, options: WorkerOptions) -> str | None:
    """Run one worker until it stops; return why it wants a restart (None: it just stopped)."""
    connection = connect(redis_url, role="worker")
    worker = make_worker(connection, options)
    worker.work(burst=options.burst, logging_level=options.log_level, max_jobs=options.max_jobs)
    return worker.restart_reason

"""Scheduler: rq-scheduler's Scheduler extended to fire schedules exactly once per due time.

Any number of scheduler processes may run. The one holding the leader lease
(owner-checked, renewed every tick and during long passes) fires; the others
poll the lease and take over within the lease TTL when the leader dies.
Firing itself is fenced (service.schedules.runs): the Lua script re-checks
the lease owner and the due score, and creates each run's job only if it is
absent, so even two processes that both believe they lead cannot double a
due time.

The loop sleeps until the earliest due time, the next lease renewal, or a
wake-up published when a schedule is added or changed; it never busy-polls.
`enqueue_jobs()` (rq-scheduler's per-pass hook) fires due schedules in
batches, then buffered runs, then any stock rq-scheduler jobs
(`Scheduler.enqueue_at/enqueue_in`), which keep working as before.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq_scheduler import Scheduler

from service.core.keys import SCHEDULER_LOCK_KEY, ScheduleKeys, job_key
from service.core.lease import Lease
from service.core.outage import REDIS_DOWN, Outage
from service.jobs.model import ServiceJob, ServiceQueue
from service.ops.rollup import Rollup
from service.schedules.runs import ACTIVE_STATUSES, Entry, Firing, plan_due_ms, report
from service.schedules.spec import to_ms, to_us
from service.schedules.store import StoredSchedule, read_due, read_for_firing

log = logging.getLogger(__name__)

# The leader renews every tick (1 s); a follower polls twice a second. A
# SIGKILLed leader is replaced within LEASE_TTL + FOLLOWER_POLL (< 5 s),
# and a leader stalled for up to 3 s (GC, noisy host) keeps its lease.
LEASE_TTL_MS = 4000
TICK_SECONDS = 1.0
FOLLOWER_POLL_SECONDS = 0.5
BUFFERED_POLL_SECONDS = 0.25
# Due schedules are read and fired this many at a time, one Lua call per chunk.
BATCH = 2000
CHUNK = 500
MAX_BATCHES_PER_PASS = 100


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector for a firing pass, restoring its state after.

    A pass allocates about a dozen containers per run and no reference cycles
    (reference counting frees all of it), while the collector's full sweeps of
    the process heap took ~7% of a 100,000-run pass. A cycle made meanwhile
    (an exception's traceback) waits for the next collection after the pass.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ServiceScheduler(Scheduler):
    """rq-scheduler with JSON jobs, a leader lease, and fenced, batched firing of schedules."""

    job_class = ServiceJob
    queue_class = ServiceQueue

    def __init__(
        self,
        connection: Redis,
        tick_seconds: float = TICK_SECONDS,
        clock: Callable[[], datetime] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(connection=connection, interval=tick_seconds, job_class=ServiceJob, **kwargs)
        # rq-scheduler's own lock key: a stock rq-scheduler sharing the database is kept out too.
        self.lease = Lease(connection, SCHEDULER_LOCK_KEY, LEASE_TTL_MS)
        self.firing = Firing(connection, owner=self.lease.owner, lease_key=SCHEDULER_LOCK_KEY)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.rollup = Rollup(connection)  # the charts' summary goes on while no worker runs, too
        self.tick_seconds = tick_seconds
        self._stopping = False
        self._pubsub: Any = None

    # -- leadership -------------------------------------------------------

    def acquire_lock(self) -> bool:
        was_leader = self.lease.held
        held = self.lease.acquire_or_renew()
        if held != was_leader:
            verb = "took" if held else "lost"
            log.info("scheduler %s: %s leadership (lease owner %s)", self.key, verb, self.lease.owner)
        return held

    def remove_lock(self) -> None:
        # The lease is kept across passes; it is given up only on shutdown.
        if self._stopping:
            self.lease.release()

    # -- firing -----------------------------------------------------------

    def enqueue_jobs(self) -> int:
        """Fire every due schedule and buffered run, then stock rq-scheduler jobs; return runs created."""
        fired = self.fire_buffered_runs()  # buffered runs are older than anything due now
        fired += self.fire_due_schedules()
        if self.connection.zcard(self.scheduled_jobs_key):
            try:
                super().enqueue_jobs()
            except RedisError:
                raise
            except Exception:  # a stock job it cannot load (a planted id) must not stop the schedules
                log.exception("scheduler %s: stock rq-scheduler jobs could not be enqueued", self.key)
        return fired

    def get_queue_for_job(self, job: Any) -> ServiceQueue:
        # rq-scheduler imports the queue class a job's meta names (queue_class_name): here it is always ours.
        key = self.queue_class.redis_queue_namespace_prefix + job.origin
        return self.queue_class.from_queue_key(key, connection=self.connection, job_class=self.job_class)

    def fire_due_schedules(self) -> int:
        """Fire the schedules whose due score has passed, in batches; stop if the lease is lost."""
        with cyclic_gc_paused():
            return self._fire_due_batches()

    def _fire_due_batches(self) -> int:
        fired = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            now = self.clock()
            due = read_due(self.connection, to_ms(now), BATCH)
            if not due:
                break
            entries, stored = self._plan(due, now)
            applied = self._apply(entries, stored, now)
            if applied is None:
                break
            fired += applied
            if len(due) < BATCH or not entries:
                break
            if not self.acquire_lock():  # a long pass keeps its lease fresh
                break
        return fired

    def _plan(
        self, due: list[tuple[str, int, StoredSchedule | None]], now: datetime
    ) -> tuple[list[Entry], dict[str, StoredSchedule]]:
        now_ms, now_us = to_ms(now), to_us(now)
        entries, stored = [], {}
        for schedule_id, score, schedule in due:
            if schedule is None:  # a due member without a schedule hash (a stray member)
                self.connection.zrem(ScheduleKeys.due, schedule_id)
                continue
            try:
                entries.append(plan_due_ms(schedule, score, now_ms, now_us))
            except Exception:  # one broken schedule must not stop the others
                log.exception("scheduler %s: cannot plan schedule %s", self.key, schedule_id)
                continue
            stored[schedule_id] = schedule
        return entries, stored

    def _apply(self, entries: list[Entry], stored: dict[str, Any], now: datetime) -> int | None:
        fired = 0
        for start in range(0, len(entries), CHUNK):
            results = self.firing.run(entries[start : start + CHUNK], stored, now)
            if results is None:
                log.warning("scheduler %s: lost the lease mid-pass; not firing", self.key)
                self.lease.held = False
                return None
            chunk = entries[start : start + CHUNK]
            fired += sum(report(entry, result) for entry, result in zip(chunk, results, strict=True))
        return fired

    def fire_buffered_runs(self) -> int:
        """Start each buffered run (overlap buffer_one) whose schedule's previous run has ended."""
        ids = sorted(member.decode() for member in self.connection.smembers(ScheduleKeys.buffered))
        if not ids:
            return 0
        stored = dict(zip(ids, read_for_firing(self.connection, ids), strict=True))
        pipe = self.connection.pipeline(transaction=False)
        for schedule_id in ids:
            last = stored[schedule_id].state.get("last_job_id", "") if stored[schedule_id] else ""
            pipe.hget(job_key(last), "status")
        entries = []
        for schedule_id, status in zip(ids, pipe.execute(), strict=True):
            schedule = stored[schedule_id]
            buffered = schedule.number("buffered_due") if schedule else None
            if buffered is None:
                self.connection.srem(ScheduleKeys.buffered, schedule_id)
            elif (status or b"").decode() not in ACTIVE_STATUSES and not schedule.paused:
                entries.append(Entry(schedule_id, "buffer", fires=[(buffered, "buffered")], buffered=buffered))
        return self._apply(entries, stored, self.clock()) or 0

    # -- the loop ---------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            log.info("scheduler %s: stopping on signal %d", self.key, signum)
            self._stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def run(self, burst: bool = False) -> None:
        """Fire due work while leader; sleep until the next due time or a wake-up; stop on SIGTERM/SIGINT."""
        self._install_signal_handlers()
        outage = Outage(log, f"scheduler {self.key}", sleep=self._wait)
        with contextlib.suppress(*REDIS_DOWN):  # raised only when stopped before Redis came back
            outage.retry(self.register_birth, stop=lambda: self._stopping)
        try:
            while not self._stopping:
                self._tick()
                if burst:
                    break
                self._wait(self._sleep_seconds())
        finally:
            self._stopping = True
            self._shutdown()

    def _tick(self) -> None:
        try:
            self.heartbeat()
            self.rollup.tick()
            if self.acquire_lock():
                self.enqueue_jobs()
        except RedisError as exc:
            log.warning("scheduler %s: Redis unavailable (%s); retrying", self.key, type(exc).__name__)
            self.lease.held = False

    def _sleep_seconds(self) -> float:
        if not self.lease.held:
            return FOLLOWER_POLL_SECONDS
        try:
            if self.connection.scard(ScheduleKeys.buffered):
                return BUFFERED_POLL_SECONDS
            first = self.connection.zrange(ScheduleKeys.due, 0, 0, withscores=True)
        except RedisError:
            return self.tick_seconds
        if not first:
            return self.tick_seconds
        until_due = first[0][1] / 1000 - self.clock().timestamp()
        return max(0.0, min(self.tick_seconds, until_due))

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds`, returning early on a schedule wake-up or a stop signal."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._wake_message(min(remaining, 0.5)):
                return

    def _wake_message(self, timeout: float) -> bool:
        try:
            if self._pubsub is None:
                self._pubsub = self.connection.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(ScheduleKeys.wakeup)
            return self._pubsub.get_message(timeout=timeout) is not None
        except RedisError:
            self._pubsub = None
            time.sleep(timeout)
            return False

    def _shutdown(self) -> None:
        try:
            if self._pubsub is not None:
                self._pubsub.close()
            self.remove_lock()
            self.register_death()
        except RedisError:
            log.warning("scheduler %s: could not release the lease; it expires by itself", self.key)

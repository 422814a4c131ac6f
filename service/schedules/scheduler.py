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
Every time it compares is Redis's (service.core.clock), never the host's:
a scheduler whose host clock is minutes off fires nothing early or late.
The lease's expiry is Redis's too (PX, kept by the server).
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
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq_scheduler import Scheduler

from service.core.clock import ServerClock
from service.core.keys import SCHEDULER_LOCK_KEY, ScheduleKeys, job_key
from service.core.lease import Lease
from service.core.outage import REDIS_DOWN, Outage, write_refused
from service.jobs.model import ServiceJob, ServiceQueue
from service.ops.rollup import Rollup
from service.schedules.calendars import CalendarCache, skip_key
from service.schedules.migrate import migrate, migrate_all
from service.schedules.runs import ACTIVE_STATUSES, BUFFERED, Entry, Firing, firable, plan_due_ms, report, run_job_id
from service.schedules.spec import to_ms, to_us
from service.schedules.store import StoredSchedule, read_due, read_many

log = logging.getLogger(__name__)

# The leader renews every tick (1 s); a follower polls twice a second. A
# SIGKILLed leader is replaced within LEASE_TTL + FOLLOWER_POLL (< 5 s),
# and a leader stalled for up to 3 s (GC, noisy host) keeps its lease.
LEASE_TTL_MS = 4000
TICK_SECONDS = 1.0
FOLLOWER_POLL_SECONDS = 0.5
BUFFERED_POLL_SECONDS = 0.25
# Due schedules are read this many at a time, and fired a chunk per Lua call, the next chunk planned
# while Redis runs the one before. Redis runs one call at a time, so every other client (a PUT, a
# worker's claim) waits behind each: a chunk of 32 runs (~0.5 ms of Redis at ~16 us a run) and a read
# of 128 rows (~4 us a row) keep each call near half a millisecond. Reads of 5,000 and chunks of 250
# made a 100,000-run burst ~5% shorter but held Redis for up to 20 ms a call (docs/benchmarks.md).
BATCH = 128
CHUNK = 32
# Fire calls sent and not yet answered: Redis always has the next chunk queued while Python plans another.
AHEAD = 2
# A pass fires at most this many before the loop's other duties (the lease, the heartbeat) get a turn.
MAX_BATCHES_PER_PASS = 500_000 // BATCH
# How the log names a Redis that refuses writes (service.core.outage.write_refused), and its end.
REFUSALS = {"maxmemory": "maxmemory reached", "misconf": "MISCONF: it cannot save to disk"}
RECOVERIES = {"down": "is back", "maxmemory": "accepts writes again", "misconf": "accepts writes again"}


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


class Tally:
    """The runs a pass created, counted as its fire calls are answered; `lost`: the lease was lost meanwhile."""

    def __init__(self, key: str, lease: Lease) -> None:
        self.key, self.lease = key, lease
        self.fired, self.lost = 0, False

    def applied(self, entries: list[Entry], results: list[Any] | None) -> None:
        if results is None:
            if not self.lost:
                log.warning("scheduler %s: lost the lease mid-pass; not firing", self.key)
            self.lease.held, self.lost = False, True
            return
        self.fired += sum(report(entry, result) for entry, result in zip(entries, results, strict=True))


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
        self.calendars = CalendarCache(per_pass=True)
        self.clock = clock or ServerClock(connection)
        self.rollup = Rollup(connection)  # the charts' summary goes on while no worker runs, too
        self.tick_seconds = tick_seconds
        self._stopping = False
        self._pubsub: Any = None
        self._redis_state = ("ok", time.monotonic())  # as the last tick met it, and since when

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

    def get_jobs_to_queue(self, with_times: bool = False) -> Any:
        # Stock rq-scheduler jobs are due by Redis's clock too (rq-scheduler reads the host's utcnow()).
        return self.get_jobs(int(self.clock().timestamp()), with_times=with_times)

    def get_queue_for_job(self, job: Any) -> ServiceQueue:
        # rq-scheduler imports the queue class a job's meta names (queue_class_name): here it is always ours.
        key = self.queue_class.redis_queue_namespace_prefix + job.origin
        return self.queue_class.from_queue_key(key, connection=self.connection, job_class=self.job_class)

    def fire_due_schedules(self) -> int:
        """Fire the schedules whose due score has passed, in batches; stop if the lease is lost."""
        with cyclic_gc_paused():
            return self._fire_due_batches()

    def _fire_due_batches(self) -> int:
        """Read due schedules a batch at a time and fire them a chunk per call, AHEAD calls ahead on one connection.

        A full batch's successor is read before the batch's last AHEAD chunks
        fire (after its last member, which is still due then), so Python parses
        and plans it while Redis fires them: Redis never waits for a read.
        """
        self.calendars.new_pass()  # calendars as they are when the pass starts
        tally = Tally(self.key, self.lease)
        now, renewed = self.clock(), time.monotonic()
        due = read_due(self.connection, to_ms(now), BATCH)
        stream = self.firing.stream(tally.applied)
        try:
            for _ in range(MAX_BATCHES_PER_PASS):
                following: datetime | None = None  # the clock the next batch is read at
                for start in range(0, len(due), CHUNK):
                    entries, stored = self._plan(due[start : start + CHUNK], now)
                    if entries:
                        stream.fire(entries, stored, now)
                    if len(due) == BATCH and start + (AHEAD + 1) * CHUNK >= len(due) and following is None:
                        following = self.clock()
                        stream.read_due(to_ms(following), BATCH, after=due[-1][:2])
                    stream.collect(in_flight=AHEAD)
                    if tally.lost:
                        return tally.fired
                if following is None:
                    break
                now, due = following, stream.due()
                if not due or tally.lost:
                    break
                if time.monotonic() - renewed >= self.tick_seconds:  # a long pass keeps its lease fresh
                    renewed = time.monotonic()
                    if not self.acquire_lock():
                        break
            stream.collect()
        finally:
            stream.close()
        return tally.fired

    def _plan(
        self, due: list[tuple[str, int, StoredSchedule | None]], now: datetime
    ) -> tuple[list[Entry], dict[str, StoredSchedule]]:
        now_ms, now_us = to_ms(now), to_us(now)
        entries, stored = [], {}
        due = [(i, score, self._readable(i, s)) for i, score, s in due]
        # The calendars the batch's schedules skip by: one read of their digests, their dates when changed.
        skips = self.calendars.skips(self.connection, (s.template for _, _, s in due if s is not None and not s.legacy))
        for schedule_id, score, schedule in due:
            if schedule is None:  # a due member without a readable schedule hash (stray, or planted)
                self.connection.zrem(ScheduleKeys.due, schedule_id)
                continue
            if schedule.legacy:  # written by a first-release process: migrated now, fired from the next batch
                migrate(self.connection, schedule_id)
                continue
            try:
                skip = skips.get(skip_key(schedule.template)) if skips else None
                entries.append(plan_due_ms(schedule, score, now_ms, now_us, skip))
            except Exception:  # one broken schedule must not stop the others
                log.exception("scheduler %s: cannot plan schedule %s", self.key, schedule_id)
                continue
            stored[schedule_id] = schedule
        return entries, stored

    def _readable(self, schedule_id: str, schedule: StoredSchedule | None) -> StoredSchedule | None:
        """`schedule`, or None when what firing reads of it does not read (a record planted in Redis)."""
        if schedule is None or schedule.legacy or firable(schedule):
            return schedule
        log.warning(
            "scheduler %s: schedule %r cannot be read: not fired until written again", self.key, schedule_id[:100]
        )
        return None

    def fire_buffered_runs(self) -> int:
        """Start each buffered run (overlap buffer_one) whose schedule's previous run has ended."""
        ids = sorted(member.decode() for member in self.connection.smembers(ScheduleKeys.buffered))
        if not ids:
            return 0
        stored = dict(zip(ids, read_many(self.connection, ids), strict=True))
        pipe = self.connection.pipeline(transaction=False)
        for schedule_id in ids:
            last = stored[schedule_id].state.last_run_at if stored[schedule_id] else None
            pipe.hget(job_key(run_job_id(schedule_id, last) if last is not None else ""), "status")
        entries = []
        for schedule_id, status in zip(ids, pipe.execute(), strict=True):
            schedule = stored[schedule_id]
            buffered = schedule.buffered_due if schedule and not schedule.legacy else None
            if buffered is None:
                self.connection.srem(ScheduleKeys.buffered, schedule_id)
            elif (status or b"").decode() not in ACTIVE_STATUSES and not schedule.paused:
                entries.append(Entry(schedule_id, "buffer", fires=[(buffered, BUFFERED)], buffered=buffered))
        tally = Tally(self.key, self.lease)
        tally.applied(entries, self.firing.run(entries, stored, self.clock()))
        return tally.fired

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
            outage.retry(lambda: migrate_all(self.connection), stop=lambda: self._stopping)
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
            refused = write_refused(exc)
            self._note_redis(refused or "down", exc)
            if not refused:  # unreachable: the lease may be gone; a refused write left it as it was
                self.lease.held = False
        else:
            self._note_redis("ok")

    def _note_redis(self, state: str, exc: BaseException | None = None) -> None:
        """Log Redis's state as this loop meets it (ok, down, maxmemory, misconf), once per change, not per tick.

        While Redis refuses writes nothing fires and nothing moves: every due
        time stays in the due set, so the first pass once Redis accepts writes
        fires or records each one (misfire_grace_time and coalesce apply).
        """
        previous, since = self._redis_state
        if state == previous:
            return
        self._redis_state = (state, time.monotonic())
        if state == "down":
            log.warning("scheduler %s: Redis unavailable (%s); retrying", self.key, type(exc).__name__)
        elif state != "ok":
            log.error(
                "scheduler %s: Redis refuses writes (%s): due runs wait in Redis, to fire within their grace once it"
                " can write",
                self.key,
                REFUSALS[state],
            )
        elif previous != "ok":
            log.warning("scheduler %s: Redis %s after %.1f s", self.key, RECOVERIES[previous], time.monotonic() - since)

    def _sleep_seconds(self) -> float:
        if not self.lease.held or self._redis_state[0] != "ok":
            return FOLLOWER_POLL_SECONDS
        try:
            if self.connection.scard(ScheduleKeys.buffered):
                return BUFFERED_POLL_SECONDS
            first = self.connection.zrange(ScheduleKeys.due, 0, 0, withscores=True)
            if not first:
                return self.tick_seconds
            until_due = first[0][1] / 1000 - self.clock().timestamp()
        except RedisError:
            return self.tick_seconds
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

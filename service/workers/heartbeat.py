"""Heartbeat: the worker's background thread that proves it is alive, runs the reaper and the charts' rollup.

It runs beside the job (no-fork mode runs the job in the main thread, fork
mode waits on the horse), on its own Redis client, so a long job never stops
the heartbeat and a fork never inherits a lock this thread holds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from redis import Redis
from redis.client import Pipeline
from rq.executions import Execution, ExecutionRegistry
from rq.registry import StartedJobRegistry
from rq.utils import utcformat

from service.core import clock, keys
from service.core.outage import REDIS_DOWN, Outage, refuses_writes
from service.ops.rollup import Rollup
from service.workers.reaper import Reaper

if TYPE_CHECKING:
    from service.workers.worker import ServiceWorker

log = logging.getLogger("service.worker")


class Heartbeat(threading.Thread):
    """Every `interval` s: liveness, worker TTLs, running execution, suspension; every `reap_every` s: the reaper;
    once a minute, if no other process has: the dashboard's rollup (service.ops.rollup)."""

    def __init__(
        self, worker: ServiceWorker, connection: Redis, *, interval: float, ttl: float, reap_every: float
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.worker = worker
        self.connection = connection
        self.interval = interval
        self.ttl = ttl
        self.reap_every = reap_every
        self.reaper = Reaper(connection, crash_retries=worker.crash_retries)
        self.rollup = Rollup(connection)
        self.outage = Outage(log, f"Worker {worker.name} heartbeat")
        self._stopping = threading.Event()
        self._connected_since: float | None = None
        self._last_reap = 0.0

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.beat()
                self.outage.up()
                if self._connected_since is None:
                    self._connected_since = time.monotonic()
                self.maybe_reap()
                self.rollup.tick()
            except REDIS_DOWN as exc:
                self._connected_since = None
                self.outage.down(exc)
                continue
            except Exception as exc:  # never let the heartbeat die
                if refuses_writes(exc):  # full or MISCONF: what could be renewed was; no reaping meanwhile
                    self._connected_since = None
                    self.outage.down(exc, wait=False)
                else:
                    log.exception("Worker %s: heartbeat error", self.worker.name)
            self._stopping.wait(self.interval)

    def beat(self) -> None:
        """Renew what RQ's own heartbeat renews (worker hash, its executions set) and ours; note `rq suspend`.

        The beat also reads Redis's clock (TIME), so the process's clock
        (service.core.clock) follows Redis's even while no job is claimed.
        Liveness is renewed with PEXPIRE, which Redis allows when it is out
        of memory (a SET would be refused), so a full Redis does not make
        live workers look dead; the key is SET only when it is missing.
        """
        worker = self.worker
        sent_at = time.time()
        alive, ttl_ms = keys.alive_key(worker.name), int(self.ttl * 1000)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.exists(keys.WORKERS_SUSPENDED_KEY)
            pipe.pexpire(alive, ttl_ms)
            pipe.expire(worker.key, int(self.ttl) + 60)
            pipe.expire(worker.executions_key, int(self.ttl) + 60)
            pipe.hset(worker.key, "last_heartbeat", utcformat(clock.utcnow()))
            # Back among the claimers if a reaper took it for dead (its key lapsed) and dropped it.
            pipe.sadd(keys.CLAIMERS_KEY, worker.name)
            with worker.records_lock:  # no record is written for a job whose outcome is being stored
                execution = worker.recording
                if execution is not None and worker.running_lane is not None:
                    self._record(execution, worker.running_lane, execution.id in worker.recorded, pipe)
                    worker.recorded.add(execution.id)
                replies = pipe.execute(raise_on_error=False)  # each command counts on its own
        if isinstance(replies[0], Exception):
            raise replies[0]
        clock.learn(clock.server_seconds(replies[0]), sent_at)
        worker.suspended = replies[1] is True or replies[1] == 1
        if replies[2] is not True and replies[2] != 1:  # first beat, or the key lapsed
            self.connection.set(alive, 1, px=ttl_ms)
        refused = next((r for r in replies if isinstance(r, Exception)), None)
        if refused is not None:
            raise refused
        worker.claimer.tally.flush_stale(self.connection)  # counts kept while a long job runs

    def _record(self, execution: Execution, lane: str, written: bool, pipe: Pipeline) -> None:
        """The running job's execution records and last_heartbeat: written at its first beat (the work script
        leaves them out: most jobs end before one), renewed at the next ones, as RQ's prepare_execution and
        heartbeat do."""
        registry = StartedJobRegistry(lane, connection=self.connection)
        ttl = int(self.ttl) + 60
        if written:
            execution.heartbeat(registry, ttl, pipeline=pipe)
            return
        execution.last_heartbeat = clock.utcnow()
        pipe.hset(keys.job_key(execution.job_id), "last_heartbeat", utcformat(execution.last_heartbeat))
        execution.save(ttl=ttl, pipeline=pipe)
        ExecutionRegistry(job_id=execution.job_id, connection=pipe).add(execution=execution, ttl=ttl, pipeline=pipe)
        registry.add_execution(execution, pipeline=pipe, ttl=ttl, xx=True)
        pipe.sadd(execution.worker_executions_key, execution.composite_key)
        pipe.expire(execution.worker_executions_key, ttl)

    def maybe_reap(self) -> None:
        now = time.monotonic()
        # After an outage every live worker needs one beat to renew its key
        # before anyone may be judged dead: wait a full TTL of connectivity.
        if self._connected_since is None or now - self._connected_since < self.ttl:
            return
        if now - self._last_reap >= self.reap_every:
            self._last_reap = now
            recovered = self.reaper.reap()
            if recovered:
                log.warning("Worker %s: reaper recovered %d job(s) of dead workers", self.worker.name, recovered)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=2)

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
from rq.executions import Execution
from rq.registry import StartedJobRegistry

from service.core import keys
from service.core.outage import REDIS_DOWN, Outage
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
            except Exception:  # never let the heartbeat die
                log.exception("Worker %s: heartbeat error", self.worker.name)
            self._stopping.wait(self.interval)

    def beat(self) -> None:
        """Renew what RQ's own heartbeat renews (worker hash, its executions set) and ours; note `rq suspend`."""
        worker = self.worker
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.exists(keys.WORKERS_SUSPENDED_KEY)
            pipe.set(keys.alive_key(worker.name), 1, px=int(self.ttl * 1000))
            pipe.expire(worker.key, int(self.ttl) + 60)
            pipe.expire(worker.executions_key, int(self.ttl) + 60)
            pipe.hset(worker.key, "last_heartbeat", time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()))
            for execution in list(worker.executions.values()):
                self._extend(execution, worker.running_lane, pipe)
            worker.suspended = bool(pipe.execute()[0])

    def _extend(self, execution: Execution, lane: str | None, pipe: object) -> None:
        if lane is None:
            return
        registry = StartedJobRegistry(lane, connection=self.connection)
        execution.heartbeat(registry, int(self.ttl) + 60, pipeline=pipe)  # type: ignore[arg-type]

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

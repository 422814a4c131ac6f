"""Scheduler: rq-scheduler's Scheduler with a renewed, owner-checked leader lease.

Any number of scheduler processes may run; the one holding the lease fires
due work, the others wait and take over when its lease lapses.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq_scheduler import Scheduler

from service.lease import Lease
from service.queues import ServiceJob, ServiceQueue

log = logging.getLogger(__name__)

LEASE_KEY = "rq:scheduler_lock"
LEASE_TTL_MS = 5000
TICK_SECONDS = 1.0


class ServiceScheduler(Scheduler):
    """rq-scheduler with JSON jobs and a leader lease renewed every tick."""

    job_class = ServiceJob
    queue_class = ServiceQueue

    def __init__(self, connection: Redis, tick_seconds: float = TICK_SECONDS, **kwargs: Any) -> None:
        super().__init__(connection=connection, interval=tick_seconds, job_class=ServiceJob, **kwargs)
        self.lease = Lease(connection, LEASE_KEY, LEASE_TTL_MS)
        self._stopping = False

    def acquire_lock(self) -> bool:
        was_leader = self.lease.held
        held = self.lease.acquire_or_renew()
        if held != was_leader:
            log.info("scheduler %s: %s leadership", self.key, "took" if held else "lost")
        return held

    def remove_lock(self) -> None:
        # The lease is kept across passes; it is given up only on shutdown.
        if self._stopping:
            self.lease.release()

    def _install_signal_handlers(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            log.info("scheduler %s: stopping on signal %d", self.key, signum)
            self._stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def run(self, burst: bool = False) -> None:
        """Fire due work every tick while leader; stop cleanly on SIGTERM/SIGINT."""
        self.register_birth()
        self._install_signal_handlers()
        try:
            while not self._stopping:
                started = time.monotonic()
                self._tick()
                if burst:
                    break
                self._sleep(TICK_SECONDS - (time.monotonic() - started))
        finally:
            self._stopping = True
            self._shutdown()

    def _tick(self) -> None:
        try:
            self.heartbeat()
            if self.acquire_lock():
                self.enqueue_jobs()
        except RedisError as exc:
            log.warning("scheduler %s: Redis unavailable (%s); retrying", self.key, type(exc).__name__)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + max(seconds, 0.0)
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, deadline - time.monotonic()))

    def _shutdown(self) -> None:
        try:
            self.remove_lock()
            self.register_death()
        except RedisError:
            log.warning("scheduler %s: could not release the lease; it expires by itself", self.key)

"""Delayed jobs: RQ's scheduler child, which moves due delayed jobs and timed retries into their lanes.

It is RQ's own RQScheduler (one per lane set, under RQ's per-lane locks, in
a child process of a worker) with two changes: each pass first reads
Redis's clock, so a job falls due on the time every process shares however
the host's clock drifts; and a pass that Redis cannot serve (down, full,
MISCONF) backs off and is tried again, logged once, where RQ's child would
log a traceback and exit until its worker starts it again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq.scheduler import RQScheduler

from service.core import clock
from service.core.outage import Outage, unavailable

log = logging.getLogger("service.worker")


class DelayedJobs(RQScheduler):
    """RQScheduler on Redis's clock, riding out Redis outages."""

    def work(self) -> None:
        """RQ's loop (register, heartbeat and locks, enqueue due jobs, sleep), each pass through outages."""
        self._install_signal_handlers()
        outage = Outage(log, f"Delayed-job scheduler {self.name}")
        outage.retry(self.register_birth, stop=lambda: self._stop_requested)
        while not self._stop_requested:
            try:
                self.run_pass()
            except Exception as exc:
                if not unavailable(exc):
                    raise
                outage.down(exc)
                continue
            outage.up()
            time.sleep(self.interval)
        try:
            self.stop()  # releases the lanes' locks, which otherwise expire
        except Exception as exc:
            if not unavailable(exc):
                raise

    def run_pass(self) -> None:
        clock.sync(self.connection)
        if self.should_reacquire_locks:
            self.acquire_locks()
        self.heartbeat()
        self.enqueue_scheduled_jobs()


def start_delayed_jobs(worker: Any, burst: bool, logging_level: Any, date_format: str, log_format: str) -> None:
    """RQ's BaseWorker._start_scheduler with DelayedJobs: take the lanes' locks, then run it (burst: one pass)."""
    worker.scheduler = DelayedJobs(
        worker.queues,
        connection=worker.connection,
        logging_level=logging_level if logging_level is not None else worker.log.level,
        date_format=date_format,
        log_format=log_format,
        serializer=worker.serializer,
    )
    worker.scheduler.acquire_locks()
    if not worker.scheduler.acquired_locks:
        return
    if not burst:
        worker.scheduler.start()
        return
    try:
        worker.scheduler.register_birth()
        worker.scheduler.enqueue_scheduled_jobs()
    finally:
        worker.scheduler.release_locks()
        worker.scheduler.register_death()

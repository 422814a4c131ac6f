"""Tally: the counters a worker keeps between its Redis calls, added by its next call that is due.

A job's counters (jobs_started, jobs_finished, the duration and wait
histograms' bucket and sum, the worker hash's successful_job_count and
total_working_time) would cost eight commands per job. The worker keeps
them here and its script call (service/core/lua/work.lua) adds them when it
claims nothing (so once the lanes are drained the counters are exact, in
the same atomic call as the last outcome), when FLUSH_SECONDS have passed
since they were last added, and at a warm stop. The heartbeat thread adds
them too when they are older than that (a long job). A SIGKILLed worker
loses what it kept: at most FLUSH_SECONDS of counts (Sidekiq flushes its
processed/failed stats the same way, on its heartbeat).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from service.core import keys, metrics

FLUSH_SECONDS = 1.0


class Tally:
    """Increments of the metrics hash's and a worker hash's fields, kept until added."""

    def __init__(self, worker_key: str) -> None:
        self.worker_key = worker_key
        self.lock = threading.RLock()  # the worker's call and the heartbeat's flush never add the same counts
        self._counts: dict[tuple[str, str], float] = {}
        self._since = time.monotonic()  # when the oldest kept count was added (or the last flush)

    def count(self, name: str, *labels: str, amount: int = 1) -> None:
        self._add("m", metrics.field(name, *labels), amount)

    def observe(self, name: str, value: float, *labels: str) -> None:
        """`value` in histogram `name`, as service.core.metrics.observe stores it: its bucket and the sum."""
        self._add("m", metrics.field(name, *labels, metrics.bucket_of(value, metrics.HISTOGRAMS[name][2])), 1)
        self._add("M", metrics.field(name, *labels, "sum"), value)

    def worker(self, name: str, amount: float) -> None:
        """Add to the worker hash's field `name` (an int for a count, a float for seconds)."""
        self._add("w" if isinstance(amount, int) else "W", name, amount)

    def _add(self, kind: str, name: str, amount: float) -> None:
        with self.lock:
            if not self._counts:
                self._since = time.monotonic()
            self._counts[kind, name] = self._counts.get((kind, name), 0) + amount

    def encoded(self) -> bytes:
        """The kept counts as the work script reads them (b'' for none); call with the lock held."""
        lines = (
            f"{kind}\t{amount if kind.islower() else f'{amount:.6f}'}\t{name}\n"
            for (kind, name), amount in self._counts.items()
        )
        return "".join(lines).encode()

    def due(self) -> bool:
        """True when the kept counts are FLUSH_SECONDS old: added whatever the call claims."""
        return bool(self._counts) and time.monotonic() - self._since >= FLUSH_SECONDS

    def clear(self) -> None:
        """The kept counts were added; call with the lock held."""
        self._counts.clear()
        self._since = time.monotonic()

    def flush_stale(self, connection: Any) -> None:
        """From the heartbeat thread: add counts kept FLUSH_SECONDS or more (a long job runs) in one MULTI."""
        if not self.lock.acquire(blocking=False):  # the worker's call is adding them
            return
        try:
            if not self.due():
                return
            with connection.pipeline() as pipe:
                for (kind, name), amount in self._counts.items():
                    key = self.worker_key if kind in "wW" else keys.METRICS_KEY
                    if kind.islower():
                        pipe.hincrby(key, name, int(amount))
                    else:
                        pipe.hincrbyfloat(key, name, amount)
                pipe.execute()
            self.clear()
        finally:
            self.lock.release()

"""Prefetch: a no-fork worker runs a lane's backlog of short jobs several to a Redis call, within hard bounds.

A job costs Redis one script call (service/core/lua/work.lua) whose fixed
part (the round trip, the event loop, the AOF write, the call itself) is
most of its cost. When recent jobs were short, the call that claims a job
also claims up to `size()` more of its lane, not started (they read as
queued); the worker runs them back to back and stores their outcomes, and
their starts with them, in the call that claims the next batch (Celery's
prefetch, Kafka's batched acknowledgement). The bounds:

- only while recent jobs were short: the batch is sized so that its jobs end
  within BOUND_SECONDS at the pace of recent job starts (starting at none; a
  job longer than half the bound ends prefetching until jobs are short again);
- an outcome, or a running job's start, is stored at most BOUND_SECONDS late:
  the worker stores them instead of running a job that would end past the
  bound, and gives the batch's jobs not run yet back to the front of their
  lane; a watchdog thread does the same (and marks the running job started)
  when a job runs past it, so a long job never holds others; the watchdog may
  wake up to the interpreter's switch interval (5 ms) late;
- a higher lane's job waits at most that bound more than behind one running job;
- only plain successes wait: a failure, a retry, a held-back job or any other
  outcome stores what waits and marks its job started first, and takes RQ's
  path (service.workers.worker); jobs under limits, damaged jobs, lanes whose
  groups take turns and fork mode are never prefetched; in a weighted lane
  order a batch counts as that many turns of its lane (claim.LaneOrder);
- a warm stop stores everything before it exits; a SIGKILLed worker's batch is
  put back at the front of its lane by the reaper, so at most a batch of short
  jobs (all but the one it had started) runs again (at-least-once, as before).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rq.executions import Execution

from service.workers.claim import Claim

log = logging.getLogger("service.worker")
BOUND_SECONDS = 0.005
MAX_PREFETCH = 7  # at most this many jobs claimed ahead of the one started: 8 jobs a call
AVERAGE_WEIGHT = 0.25  # each job's share of the running average of job durations


@dataclass
class Outcome:
    """A plain success not stored yet: its keys and arguments for the work script, and what follows its store."""

    part: tuple[list[Any], list[Any]]
    job: Any
    queue: Any


@dataclass
class Running:
    """A prefetched job running without being marked started in Redis."""

    claim: Claim
    execution: Execution
    started_at: str  # RQ's ISO format
    attempts: int
    state: str = "deferred"  # "started": marked started since (past the bound); "gone": not queued any more


class Prefetch:
    """One worker's prefetched claims, its outcomes not stored yet, and the watchdog that bounds their delay.

    `lock` is held by whoever reads or changes them (the worker's main thread, the watchdog): a call that
    stores outcomes holds it throughout. `on_deadline` runs in the watchdog thread, the lock held.
    """

    def __init__(self, on_deadline: Callable[[], None], most: int = MAX_PREFETCH) -> None:
        self.most = most  # worker.py --prefetch: at most this many jobs claimed ahead (0: none)
        self.lock = threading.RLock()
        self.claims: deque[Claim] = deque()  # claimed, not started, in lane order
        self.pending: list[Outcome] = []  # ended, outcome not stored yet
        self.running: Running | None = None
        self._began: float | None = None  # when the last job began (monotonic): job to job times size the batches
        self._average: float | None = None  # running average of job durations (s)
        self._since: float | None = None  # when the oldest thing not stored happened (monotonic)
        self._on_deadline = on_deadline
        self._wake = threading.Condition(self.lock)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def size(self, limit: int | None = None) -> int:
        """How many jobs to prefetch with the next claim: as many as end within the bound at the recent pace."""
        if not self.most or self._average is None or self._average * 2 > BOUND_SECONDS:
            return 0
        size = min(self.most, int(BOUND_SECONDS / max(self._average, 1e-5)) - 1)
        return max(0, min(size, limit if limit is not None else size))

    def begin_job(self) -> None:
        """A job begins: the time since the last one began (its run, its outcome, the worker's own work, a call
        or a wait for work) updates the average; a long one resets it at once."""
        now = time.monotonic()
        if self._began is not None:
            seconds = now - self._began
            if self._average is None or seconds * 2 > BOUND_SECONDS:
                self._average = seconds
            else:
                self._average += AVERAGE_WEIGHT * (seconds - self._average)
        self._began = now

    def may_defer(self) -> bool:
        """True when the next prefetched job may run with what is not stored yet waiting for it."""
        return bool(self.claims) and self.short()

    def begin(self, running: Running) -> None:
        """A job starts with what the bound covers (its own start, outcomes, prefetched jobs behind it): if it runs
        past the bound, the watchdog stores what waits, marks it started and puts the prefetched jobs back."""
        self.running = running
        if self._since is None:
            self._since = time.monotonic()
            self._start_watchdog()
            self._wake.notify()

    def defer(self, outcome: Outcome) -> Claim:
        """Keep `outcome` for the next call; return the next prefetched claim, to run now."""
        self.pending.append(outcome)
        self.running = None
        return self.claims.popleft()

    def short(self) -> bool:
        """True when recent jobs were short enough to run a prefetched job without a call first."""
        return (
            self._average is not None
            and self._average * 2 <= BOUND_SECONDS
            and (self._since is None or time.monotonic() - self._since + self._average <= BOUND_SECONDS)
        )

    def stored(self) -> None:
        """What waited was stored by a call (the bound starts again with the next deferral)."""
        self.pending, self._since = [], None

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _start_watchdog(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="prefetch-watchdog", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self.lock:
            while not self._stopping:
                if self._since is None:
                    self._wake.wait()
                    continue
                left = self._since + BOUND_SECONDS - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                elif self.running is not None and (self.running.state == "deferred" or self.claims):
                    try:
                        self._on_deadline()
                    except Exception:  # Redis down or full: the main thread stores them once it can
                        log.warning("Prefetch: what waits could not be stored past the bound", exc_info=True)
                        self._since = time.monotonic() + 1.0
                elif self.running is None and (self.pending or self.claims):  # between jobs: the main thread goes on
                    self._wake.wait(BOUND_SECONDS / 5)
                else:
                    self._since = None

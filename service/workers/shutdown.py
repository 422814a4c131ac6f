"""Shutdown: the warm-shutdown grace period and the interruption of a job that outlives it.

On SIGTERM (Heroku sends it to every process of the dyno, then SIGKILL 30 s
later) a worker stops taking jobs and lets the running one finish. If it is
still running when the grace period ends, `ShutdownImminent` is raised inside
the job (in the worker's main thread, or in the fork's work horse), and the
worker puts the job back at the front of its lane, before the SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("service.worker")

# Heroku kills 30 s after SIGTERM; 25 s leaves time to requeue and exit.
DEFAULT_GRACE_SECONDS = 25.0
# The signal that carries "grace is over" into the thread or horse running the job.
INTERRUPT_SIGNAL = signal.SIGUSR1


class ShutdownImminent(BaseException):
    """Raised inside a running job when the warm-shutdown grace period is over.

    A BaseException, like KeyboardInterrupt, so that a task's `except Exception`
    does not swallow it.
    """


def raise_shutdown_imminent(signum: int, frame: FrameType | None) -> None:
    raise ShutdownImminent(f"warm shutdown grace period is over (signal {signal.Signals(signum).name})")


def install_interrupt_handler() -> None:
    """Make INTERRUPT_SIGNAL raise ShutdownImminent in this process's main thread."""
    signal.signal(INTERRUPT_SIGNAL, raise_shutdown_imminent)


class GraceTimer:
    """After `grace_seconds`, calls `interrupt()` once (from a timer thread) unless cancelled."""

    def __init__(self, grace_seconds: float, interrupt: Callable[[], None]) -> None:
        self.grace_seconds = grace_seconds
        self._interrupt = interrupt
        self._timer: threading.Timer | None = None
        self.fired = False

    def start(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.grace_seconds, self.fire)
            self._timer.daemon = True
            self._timer.start()

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            log.warning(
                "Warm shutdown: grace period of %.1f s is over, interrupting the running job", self.grace_seconds
            )
            self._interrupt()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def interrupt_main_thread() -> None:
    """Deliver INTERRUPT_SIGNAL to this process's main thread (no-fork mode)."""
    signal.pthread_kill(threading.main_thread().ident or 0, INTERRUPT_SIGNAL)


def interrupt_process(pid: int) -> None:
    """Deliver INTERRUPT_SIGNAL to a work horse (fork mode); a vanished horse is fine."""
    if pid:
        try:
            os.kill(pid, INTERRUPT_SIGNAL)
        except ProcessLookupError:
            pass

"""Loaded (through PYTHONPATH) by test processes that run under libfaketime: time.sleep through select().

libfaketime 0.9.10 fakes CLOCK_MONOTONIC by default, and then a timed lock
wait (threading.Event.wait, Condition.wait with a timeout) never returns:
CPython waits with sem_clockwait, which libfaketime does not wrap, on a
faked deadline. With FAKETIME_DONT_FAKE_MONOTONIC=1 those waits work, but
time.sleep (clock_nanosleep on an absolute monotonic deadline) fails with
EINVAL. So skewed processes keep the real monotonic clock and sleep through
select(), which takes a relative timeout. Only the wall clock is skewed.
"""

from __future__ import annotations

import select
import time


def _sleep(seconds: float) -> None:
    select.select([], [], [], seconds)


time.sleep = _sleep

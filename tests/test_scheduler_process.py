"""scheduler.py as a real process: starts, holds the leader lease, stops cleanly."""

from __future__ import annotations

import signal

import pytest
from redis import Redis

from service.core.keys import SCHEDULER_LOCK_KEY as LEASE_KEY
from tests.helpers import wait_until
from tests.processes import Processes

pytestmark = pytest.mark.matrix


def test_scheduler_takes_the_lease_and_releases_it_on_sigterm(connection: Redis, processes: Processes) -> None:
    scheduler = processes.scheduler()
    wait_until(lambda: connection.get(LEASE_KEY), timeout=20, what="the scheduler to take its lease")
    assert 0 < connection.pttl(LEASE_KEY) <= 5000
    scheduler.signal(signal.SIGTERM)
    assert scheduler.wait(timeout=15) == 0
    assert connection.get(LEASE_KEY) is None


def test_second_scheduler_waits_and_takes_over_when_the_first_stops(connection: Redis, processes: Processes) -> None:
    first = processes.scheduler(name="first")
    owner = wait_until(lambda: connection.get(LEASE_KEY), timeout=20)
    second = processes.scheduler(name="second")
    wait_until(lambda: b"Registering birth" in second.output().encode() or second.alive(), timeout=5)
    assert connection.get(LEASE_KEY) == owner
    first.signal(signal.SIGKILL)
    new_owner = wait_until(lambda: (o := connection.get(LEASE_KEY)) and o != owner and o, timeout=10)
    assert new_owner != owner

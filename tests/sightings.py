"""Sightings: when each job id first appeared in a lane, by Redis's clock, independent of what any process claims.

The test polls the lane (only new entries: no worker takes from it) and
Redis's TIME in one MULTI, so a sighting is an upper bound of the moment the
job was pushed, on the clock every process is meant to keep.
"""

from __future__ import annotations

from collections.abc import Callable

from redis import Redis

from service.core.keys import queue_key
from tests.helpers import wait_until


class Sightings:
    """First sightings of the ids pushed to one lane; `order` keeps every push, duplicates included."""

    def __init__(self, connection: Redis, lane: str = "default") -> None:
        self.connection = connection
        self.lane = queue_key(lane)
        self.first: dict[str, float] = {}
        self.order: list[str] = []
        self.now = 0.0  # Redis's clock at the last look, epoch seconds

    def look(self) -> None:
        pipe = self.connection.pipeline(transaction=True)  # both read at the same instant
        pipe.lrange(self.lane, len(self.order), -1)
        pipe.time()
        ids, (seconds, micros) = pipe.execute()
        self.now = seconds + micros / 1e6
        for raw in ids:
            job_id = raw.decode()
            self.order.append(job_id)
            self.first.setdefault(job_id, self.now)

    def watch(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Look every 10 ms until `done()`."""
        wait_until(lambda: self.look() or done(), timeout=timeout, interval=0.01, what=what)

    def runs(self, schedule_id: str) -> dict[int, float]:
        """Due second -> first sighting, for the runs of `schedule_id` (ids `<schedule_id>-<due epoch s>`)."""
        prefix = f"{schedule_id}-"
        found = {}
        for job_id, moment in self.first.items():
            if job_id.startswith(prefix) and job_id[len(prefix) :].isdigit():
                found[int(job_id[len(prefix) :])] = moment
        return found

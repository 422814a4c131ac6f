"""Lanes: the priority queues a job can go to, in priority order."""

from __future__ import annotations

from service.errors import UnknownQueue

LANES = ("high", "default", "low")


def check_lane(name: object, field: str = "queue") -> str:
    """Return `name` if it is a lane; raise UnknownQueue (naming `field`) otherwise."""
    if not isinstance(name, str) or name not in LANES:
        raise UnknownQueue(name, field)
    return name

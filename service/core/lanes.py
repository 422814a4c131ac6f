"""Lanes: the priority queues a job can go to, in priority order, and routing by task name."""

from __future__ import annotations

from fnmatch import fnmatchcase

from service.core.errors import UnknownQueue

LANES = ("high", "default", "low")

# (pattern, lane) pairs, first match wins; added by task modules with route().
ROUTES: list[tuple[str, str]] = []


def check_lane(name: object, field: str = "queue") -> str:
    """Return `name` if it is a lane; raise UnknownQueue (naming `field`) otherwise."""
    if not isinstance(name, str) or name not in LANES:
        raise UnknownQueue(name, field)
    return name


def route(pattern: str, lane: str) -> None:
    """Send tasks whose name matches `pattern` (e.g. 'reports.*') to `lane` unless a job names its own."""
    check_lane(lane, "lane")
    ROUTES[:] = [(p, q) for p, q in ROUTES if p != pattern] + [(pattern, lane)]


def lane_for(task_name: str, task_default: str) -> str:
    """Return the lane of the first routing rule matching `task_name`, else the task's default."""
    for pattern, lane in ROUTES:
        if fnmatchcase(task_name, pattern):
            return lane
    return task_default

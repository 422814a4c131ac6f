"""Lanes: the priority queues a job can go to, in priority order, and routing by task name."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from service.core.errors import InvalidField, UnknownQueue

LANES = ("high", "default", "low")
# A job's fair-share group within its lane (a customer, an account).
GROUP = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
GROUP_RULE = "1-64 characters of [A-Za-z0-9_.:-]"

# (pattern, lane) pairs, first match wins; added by task modules with route().
ROUTES: list[tuple[str, str]] = []


def check_lane(name: object, field: str = "queue") -> str:
    """Return `name` if it is a lane; raise UnknownQueue (naming `field`) otherwise."""
    if not isinstance(name, str) or name not in LANES:
        raise UnknownQueue(name, field)
    return name


def check_group(value: object, field: str = "group") -> str | None:
    """Return `value` if it is None or a group name; raise InvalidField (naming `field`) otherwise."""
    if value is None or (isinstance(value, str) and GROUP.fullmatch(value)):
        return value
    raise InvalidField(field, f"must be {GROUP_RULE}")


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

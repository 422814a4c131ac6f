"""Path arguments: every `<argument>` of every route, API and dashboard, checked against what the service creates.

A path id the service would never create (a trailing newline, a NUL, a
Unicode digit, 10 kB, another lane) is a 404 before any view or library code
sees it, so no view can turn it into a 500 or a write. Each argument name has
one rule, checked on the whole string; a route with an argument not listed
here answers 404 until it is added (tests/test_routes_hostile.py fails first).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask, request
from werkzeug.routing import IntegerConverter

from service.api.context import settings
from service.core.config import whole_number
from service.core.errors import BatchNotFound, CalendarNotFound, JobNotFound, NotFound, ScheduleNotFound
from service.core.lanes import LANES
from service.jobs.model import JOB_ID
from service.schedules.spec import SCHEDULE_ID

# rq-dashboard's registry names and sort orders ('dsc' is its spelling of descending).
REGISTRIES = frozenset({"queued", "scheduled", "deferred", "started", "finished", "failed", "canceled"})
ORDERS = frozenset({"asc", "dsc"})
SCHEDULE_ACTIONS = frozenset({"pause", "resume", "run"})
# A file under rq-dashboard's static folder: no empty, hidden or `..` segment.
STATIC_FILE = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}/){0,4}[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


def _page_size(value: object) -> bool:
    number = value if isinstance(value, int) else whole_number(str(value))
    return number is not None and 1 <= number <= settings().limits.page_size


def _page(value: object) -> bool:
    number = value if isinstance(value, int) else whole_number(str(value))
    return number is not None and 1 <= number <= 1_000_000


# Each argument's rule, and how the 404 message states it.
RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "job_id": (lambda v: isinstance(v, str) and JOB_ID.fullmatch(v) is not None, "1-200 letters, digits, '_' or '-'"),
    # A batch id is shaped as a job id (service.jobs.batches).
    "batch_id": (lambda v: isinstance(v, str) and JOB_ID.fullmatch(v) is not None, "1-200 letters, digits, '_' or '-'"),
    "schedule_id": (
        lambda v: isinstance(v, str) and SCHEDULE_ID.fullmatch(v) is not None,
        "1-100 letters, digits, '_' or '-'",
    ),
    "calendar_id": (
        lambda v: isinstance(v, str) and SCHEDULE_ID.fullmatch(v) is not None,
        "1-100 letters, digits, '_' or '-'",
    ),
    "queue_name": (lambda v: v is None or v in LANES, "a lane: " + ", ".join(LANES)),  # None: "all queues"
    "registry_name": (lambda v: v in REGISTRIES, "a registry: " + ", ".join(sorted(REGISTRIES))),
    "order": (lambda v: v in ORDERS, "asc or dsc"),
    "per_page": (_page_size, "a page size up to MAX_PAGE_SIZE"),
    "page": (_page, "a page number"),
    "instance_number": (lambda v: v == 0, "0 (one Redis)"),  # rq-dashboard raises LookupError on any other
    "action": (lambda v: v in SCHEDULE_ACTIONS, "pause, resume or run"),
    "filename": (lambda v: isinstance(v, str) and STATIC_FILE.fullmatch(v) is not None, "a dashboard file"),
}
# The error (and code) of an argument that names a thing the API has its own 404 for.
NOT_FOUND = {
    "job_id": JobNotFound,
    "schedule_id": ScheduleNotFound,
    "calendar_id": CalendarNotFound,
    "batch_id": BatchNotFound,
}


class AsciiIntegerConverter(IntegerConverter):
    """`<int:...>` on ASCII digits only: werkzeug's `\\d+` also matches '٣', which int() reads as 3."""

    regex = r"[0-9]+"
    signed_regex = r"-?[0-9]+"


def check_path_arguments() -> None:
    """Before a view: 404 when any path argument breaks its rule (or has no rule)."""
    for name, value in (request.view_args or {}).items():
        check, expected = RULES.get(name, (lambda _: False, "an argument this service knows"))
        if not check(value):
            error = NOT_FOUND.get(name, NotFound)
            raise error(f"{name}: {str(value)[:100]!r} names nothing here; expected {expected}")


def use_ascii_integers(app: Flask) -> None:
    """Make `<int:...>` ASCII-only for every route registered after this call (before any blueprint)."""
    app.url_map.converters["int"] = AsciiIntegerConverter


def init_app(app: Flask) -> None:
    """Check path arguments after authentication (registered last: an unknown caller gets 401, not 404)."""
    app.before_request(check_path_arguments)

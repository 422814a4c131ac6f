"""Damage: the fields of a stored job hash checked one by one before RQ reads them.

RQ's Job.restore parses a dozen fields (times, numbers, status, JSON lists)
and raises on the first one it cannot read, so one damaged field, whoever
wrote it, made a job that nothing could load: not a worker, not the reaper,
not the API. `inspect` keeps the fields that read as the service writes them
and names the others; ServiceJob loads what is left and fails the job with
that reason instead of running it.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from typing import Any

from rq.job import JobStatus

from service.core.lanes import GROUP, GROUP_RULE, LANES
from service.jobs.callbacks import CALLBACKS

# RQ's job id characters, with the service's own length limit; checked as a whole string.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
MAX_SECONDS = 10 * 366 * 24 * 3600
MAX_COUNT = 1000
# The service's field for a job's fair-share group (RQ's own `group_id` is its batch container).
GROUP_FIELD = "svc_group"
# The service's field naming the batch a job belongs to (service.jobs.batches).
BATCH_FIELD = "svc_batch"
STATUSES = frozenset(status.value for status in JobStatus)


def is_job_id(value: object) -> bool:
    """True when `value` is an id the service could have given a job."""
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def _whole(low: int, high: int) -> Callable[[bytes], bool]:
    return lambda raw: low <= int(raw) <= high


def _json(accept: Callable[[Any], bool]) -> Callable[[bytes], bool]:
    return lambda raw: accept(json.loads(raw))


def _meta(value: Any) -> bool:
    expires_at = value.get("expires_at") if isinstance(value, dict) else None
    return isinstance(value, dict) and (expires_at is None or type(expires_at) in (int, float))


def _exc_info(raw: bytes) -> bool:
    try:
        raw = zlib.decompress(raw)
    except zlib.error:
        pass
    return isinstance(raw.decode(), str)


SECONDS = (f"a whole number of seconds from 1 to {MAX_SECONDS}", _whole(1, MAX_SECONDS))
TTL = (f"a whole number of seconds from -1 to {MAX_SECONDS}", _whole(-1, MAX_SECONDS))
COUNT = (f"a whole number from 0 to {MAX_COUNT}", _whole(0, MAX_COUNT))
FLAG = ("0 or 1", _whole(0, 1))
# RQ's own time format; a date that has it but does not exist (month 13) fails RQ's parse: "unreadable".
TIME = ("a time", re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z?").fullmatch)
TEXT = ("UTF-8 text", lambda raw: isinstance(raw.decode(), str))
CALLBACK = ("one of the service's callbacks", lambda raw: raw.decode() in CALLBACKS)
INTERVALS = (
    "a JSON list of seconds",
    _json(lambda v: isinstance(v, list) and all(type(i) is int and i >= 0 for i in v)),
)

# Every field RQ's restore parses (and the service's own), with what it must hold.
FIELDS: dict[str, tuple[str, Callable[[bytes], bool]]] = {
    **dict.fromkeys(("created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat"), TIME),
    **dict.fromkeys(("worker_name", "description", "group_id", "rate_limit_key"), TEXT),
    **dict.fromkeys(("success_callback_name", "failure_callback_name", "stopped_callback_name"), CALLBACK),
    **dict.fromkeys(("timeout", "success_callback_timeout", "failure_callback_timeout"), SECONDS),
    "stopped_callback_timeout": SECONDS,
    **dict.fromkeys(("result_ttl", "failure_ttl", "ttl"), TTL),
    **dict.fromkeys(("number_of_retries", "retries_left", "repeats_left", "attempts", "crashes"), COUNT),
    "rate_limit_concurrency": COUNT,
    **dict.fromkeys(("allow_dependency_failures", "enqueue_at_front", "enqueue_at_front_on_retry"), FLAG),
    **dict.fromkeys(("retry_intervals", "repeat_intervals"), INTERVALS),
    "origin": ("a lane", lambda raw: raw.decode() in LANES),
    "status": ("an RQ job status", lambda raw: raw.decode() in STATUSES),
    "dependency_id": ("a job id", lambda raw: is_job_id(raw.decode())),
    "dependency_ids": ("a JSON list of job ids", _json(lambda v: isinstance(v, list) and all(map(is_job_id, v)))),
    "meta": ("a JSON object (with a numeric expires_at, if any)", _json(_meta)),
    "exc_info": ("UTF-8 text", _exc_info),
    GROUP_FIELD: (GROUP_RULE, lambda raw: GROUP.fullmatch(raw.decode()) is not None),
    BATCH_FIELD: ("a batch id", lambda raw: is_job_id(raw.decode())),
}
# RQ would POST to URLs stored here, outside the outbound fence: never read.
IGNORED = frozenset({"webhooks"})


BY_KEY = {**FIELDS, **{name.encode(): check for name, check in FIELDS.items()}}


def inspect(raw: dict[Any, Any]) -> tuple[dict[str, bytes], list[str]]:
    """Split a stored job hash into the fields RQ can read as the service writes them, and the problems found.

    An empty value counts as absent (RQ writes '' for unset fields); a field
    name that is not UTF-8 is no field RQ knows and is left out.
    """
    fields: dict[str, bytes] = {}
    problems: list[str] = []
    for key, value in raw.items():
        try:
            name = key.decode() if isinstance(key, bytes) else str(key)
        except UnicodeDecodeError:
            continue
        if not value or name in IGNORED:
            continue
        value = value if isinstance(value, bytes) else str(value).encode()
        check = BY_KEY.get(key)
        if check is None:
            fields[name] = value
            continue
        try:
            good = check[1](value)
        except Exception:  # any parse error means the same: not what the service writes
            good = False
        if good:
            fields[name] = value
        else:
            problems.append(f"{name} holds {value[:60]!r}, not {check[0]}")
    if "data" not in fields:
        problems.append("no data")
        fields["data"] = b""
    if "status" not in fields and not raw.get(b"status", raw.get("status")):
        problems.append("no status")  # every job the service or RQ writes has one
    return fields, problems

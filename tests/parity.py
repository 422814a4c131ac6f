"""Parity helpers: what stock RQ and the service leave in Redis and what RQ's readers see, ids and times taken out.

A snapshot is a flat dict {(key, item): value}: every Redis key with its
type, its TTL class and its content (hash fields, set members, registry
members with their score relative to now, stream entries). Job ids, worker
names and execution ids become labels (`<job>`, `<worker>`, `<exec>`),
timestamps become `<time>` (with the orderings RQ's storage implies kept as
their own items), TTLs and scores are rounded to 10 s. Two snapshots taken
after the same work then compare item by item, and `differences` lists
every item that is not the same on both sides.
"""

from __future__ import annotations

import base64
import re
import time
import zlib
from fnmatch import fnmatchcase
from typing import Any

from flask.testing import FlaskClient
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from service.tasks.registry import REGISTRY
from tests.conftest import TOKEN

Item = tuple[str, str]
Snapshot = dict[Item, Any]

# Hash fields that hold a time: compared by presence and by the orderings below.
TIME_FIELDS = frozenset(
    {"created_at", "enqueued_at", "started_at", "ended_at", "last_heartbeat", "birth", "death",
     "shutdown_requested_date", "execution_started_at", "execution_ended_at"}
)  # fmt: skip
# Orderings RQ's own writes keep between a job's times: (earlier, later).
JOB_ORDER = (("created_at", "enqueued_at"), ("started_at", "ended_at"), ("ended_at", "last_heartbeat"))
HOST_FIELDS = frozenset({"pid", "hostname", "ip_address", "python_version"})
REGISTRIES = ("queued", "started", "finished", "failed", "deferred", "scheduled", "canceled")
DASHBOARD_AUTH = {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}
ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


# Differences on purpose, in every scenario where the item exists: (key, item) as shell patterns -> why.
ALWAYS: dict[Item, str] = {
    ("svc:metrics", "*"): "the service's job counters and durations (GET /metrics)",
    ("svc:doorbell:default", "*"): "wake-up tokens for idle workers, one per push into the lane",
    ("svc:rollup*", "*"): "the dashboard charts' summary of the minute, written by a worker's heartbeat",
    ("rq:job:*", "attempts"): "the service counts a job's starts in its hash (GET /jobs shows them)",
    ("rq:job:*", "data.function"): "a job names its registered task, never an import path",
    ("Job.fetch *", "function"): "a job names its registered task, never an import path",
    ("*", "description"): "a job is described by its task name, not by a call string with its arguments",
    ("dashboard * jobs", "jobs.*.description"): "a job is described by its task name, not by a call string",
    ("dashboard workers", "workers.*.current_job.description"): "a job is described by its task name",
    ("dashboard workers", "workers.*.current_job.call_string"): "a job calls its registered task, not an import path",
}

# What the service leaves out on purpose (absent or empty on its side only) to keep fewer bytes for a finished job's
# result_ttl (docs/redis.md): (key, item) patterns -> why. Any other difference in these items is still one.
LEFT_OUT: dict[Item, str] = {
    ("rq:job:*", "last_heartbeat"): "a finished job's last heartbeat would repeat its ended_at",
    ("rq:job:*", "ended_at <= last_heartbeat"): "a finished job's last heartbeat would repeat its ended_at",
    ("rq:results:*", "*.worker_name"): "a success's result keeps its type and value: its worker is the job hash's",
    ("rq:results:*", "*.execution_*"): "a success's result keeps its type and value: its times are the job hash's",
    (
        "Job.fetch *",
        "latest_result.worker_name",
    ): "a success's result keeps its type and value: the job names its worker",
    (
        "Job.fetch *",
        "latest_result.execution_id",
    ): "a success's execution is deleted when it ends: its id names nothing",
}


class Labels:
    """Replaces ids in key names and values by stable labels ('<job>', '<worker>', '<exec>')."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = dict(names)  # id -> label

    def add(self, value: str, label: str) -> None:
        if value and value not in self.names:
            self.names[value] = label

    def __call__(self, text: str) -> str:
        for value, label in sorted(self.names.items(), key=lambda item: -len(item[0])):
            text = text.replace(value, label)
        return text


def decode(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def ttl_class(seconds: int) -> Any:
    """A key's TTL: 'none' (persistent) or rounded to 10 s."""
    return "none" if seconds == -1 else int(round(seconds, -1))


def score_class(score: float, now: float) -> str:
    """A registry score relative to now, rounded to 10 s ('+inf' stays)."""
    if score == float("inf"):
        return "+inf"
    return f"now{int(round(score - now, -1)):+d}"


def call_of(data: bytes) -> tuple[str, Any, Any]:
    """(function name, args, kwargs) of a job's stored data (zlib-compressed JSON, or plain JSON)."""
    try:
        data = zlib.decompress(data)
    except zlib.error:
        pass
    func, _, args, kwargs = JSONSerializer.loads(data)
    return func, args, kwargs


def function_kind(name: str) -> str:
    """How a job names its function: a registered task name, or an import path (stock RQ)."""
    if name in REGISTRY:
        return "task name"
    module, _, attr = name.rpartition(".")
    matches = [s for s in REGISTRY.all() if s.func.__module__ == module and s.func.__qualname__ == attr]
    return "import path" if matches else f"unknown {name}"


def exception_line(encoded: bytes) -> str:
    """The last line of a failure's traceback, as RQ stores it in a result (base64 of zlib)."""
    text = zlib.decompress(base64.b64decode(encoded)).decode()
    return [line for line in text.strip().splitlines() if line.strip()][-1]


def job_fields(key: str, raw: dict[bytes, bytes], labels: Labels, out: Snapshot) -> None:
    # An empty field reads as an absent one (RQ's restore takes both as unset): RQ writes it, the service leaves it out.
    fields = {decode(k): v for k, v in raw.items() if v}
    for field, value in fields.items():
        if field in TIME_FIELDS:
            out[(key, field)] = "<time>" if value else ""
        elif field == "data":
            func, args, kwargs = call_of(value)
            out[(key, "data.function")] = function_kind(func)
            out[(key, "data.args")] = args
            out[(key, "data.kwargs")] = kwargs
        elif field == "description":
            out[(key, field)] = description_kind(decode(value))
        else:
            out[(key, field)] = labels(decode(value))
    for earlier, later in JOB_ORDER:
        if fields.get(earlier) and fields.get(later):
            out[(key, f"{earlier} <= {later}")] = fields[earlier] <= fields[later]


def description_kind(text: str) -> str:
    """RQ describes a job by its call string ('pkg.mod.func(1)'); the service by the task name."""
    if text in REGISTRY:
        return "task name"
    return "call string" if "(" in text else text


def worker_fields(key: str, raw: dict[bytes, bytes], labels: Labels, out: Snapshot) -> None:
    for field, value in ((decode(k), v) for k, v in raw.items()):
        if field in TIME_FIELDS:
            out[(key, field)] = "<time>" if value else ""
        elif field in HOST_FIELDS:
            out[(key, field)] = "<host>"
        elif field == "total_working_time":
            out[(key, field)] = "<seconds>" if float(value) > 0 else "0"
        else:
            out[(key, field)] = labels(decode(value))


def stream_entries(key: str, entries: list[Any], labels: Labels, out: Snapshot) -> None:
    for index, (_, raw) in enumerate(entries):
        fields = {decode(k): v for k, v in raw.items()}
        for field, value in fields.items():
            item = (key, f"{index}.{field}")
            if field in TIME_FIELDS:
                out[item] = "<time>" if value else ""
            elif field == "return_value":
                out[item] = JSONSerializer.loads(base64.b64decode(value))
            elif field == "exc_string":
                out[item] = exception_line(value)
            else:
                out[item] = labels(decode(value))
        started, ended = fields.get("execution_started_at"), fields.get("execution_ended_at")
        if started and ended:
            out[(key, f"{index}.execution_started_at <= execution_ended_at")] = float(started) <= float(ended)


def learn_ids(connection: Redis, labels: Labels, worker_name: str) -> None:
    """Label the worker and every execution id found in streams, execution keys and registries."""
    labels.add(worker_name, "<worker>")
    for key in connection.scan_iter("rq:results:*"):
        for _, fields in connection.xrange(key):
            labels.add(decode(fields.get(b"execution_id", b"")), "<exec>")
    for key in connection.scan_iter("rq:execution:*"):
        labels.add(decode(key).rsplit(":", 1)[-1], "<exec>")


def snapshot(connection: Redis, labels: Labels, worker_name: str) -> Snapshot:
    """Everything in Redis, as comparable items."""
    learn_ids(connection, labels, worker_name)
    now = time.time()
    out: Snapshot = {}
    for raw_key in sorted(connection.keys("*")):
        key, kind = labels(decode(raw_key)), decode(connection.type(raw_key))
        out[(key, "type")] = kind
        out[(key, "ttl")] = ttl_class(connection.ttl(raw_key))
        read_key(connection, raw_key, key, kind, labels, now, out)
    return out


def read_key(connection: Redis, raw_key: bytes, key: str, kind: str, labels: Labels, now: float, out: Snapshot) -> None:
    """Add the content of one key to `out`."""
    if kind == "hash" and key.startswith("rq:job:"):
        job_fields(key, connection.hgetall(raw_key), labels, out)
    elif kind == "hash" and key.startswith("rq:worker:"):
        worker_fields(key, connection.hgetall(raw_key), labels, out)
    elif kind == "hash":
        for field, value in connection.hgetall(raw_key).items():
            out[(key, decode(field))] = "<time>" if decode(field) in TIME_FIELDS else labels(decode(value))
    elif kind == "zset":
        for member, score in connection.zrange(raw_key, 0, -1, withscores=True):
            out[(key, labels(decode(member)))] = score_class(score, now)
    elif kind == "list":
        out[(key, "items")] = [labels(decode(m)) for m in connection.lrange(raw_key, 0, -1)]
    elif kind == "set":
        out[(key, "members")] = sorted(labels(decode(m)) for m in connection.smembers(raw_key))
    elif kind == "stream":
        stream_entries(key, connection.xrange(raw_key), labels, out)
    else:
        out[(key, "value")] = labels(decode(connection.get(raw_key) or b""))


def readback(connection: Redis, client: FlaskClient, labels: Labels, jobs: dict[str, str]) -> Snapshot:
    """What RQ's own readers report: Job.fetch and its latest result, and rq-dashboard's JSON routes."""
    out: Snapshot = {}
    for label, job_id in jobs.items():
        out.update({(f"Job.fetch {label}", k): v for k, v in flatten(fetched(connection, job_id, labels)).items()})
        out.update(dashboard(client, f"/dashboard/0/data/job/{job_id}.json", f"dashboard job {label}", labels))
    for registry in REGISTRIES:
        path = f"/dashboard/0/data/jobs/default/{registry}/8/asc/1.json"
        out.update(dashboard(client, path, f"dashboard {registry} jobs", labels))
    out.update(dashboard(client, "/dashboard/0/data/queues.json", "dashboard queues", labels))
    out.update(dashboard(client, "/dashboard/0/data/workers.json", "dashboard workers", labels))
    return out


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """A JSON-like value as {dotted path: scalar or list of scalars}."""
    if isinstance(value, dict) and value:
        parts = value.items()
    elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        parts = enumerate(value)  # type: ignore[assignment]
    else:
        return {path: value}
    return {k: v for name, item in parts for k, v in flatten(item, f"{path}.{name}" if path else str(name)).items()}


def fetched(connection: Redis, job_id: str, labels: Labels) -> dict[str, Any]:
    """A job as Job.fetch (JSON serializer) and latest_result() read it."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return {"exists": False}
    latest = job.latest_result()
    return {
        "exists": True,
        "status": str(job.get_status()),
        "origin": job.origin,
        "function": function_kind(job.func_name),
        "args": job.args,
        "kwargs": job.kwargs,
        "return_value": job.return_value(),
        "retries_left": job.retries_left,
        "number_of_retries": job.number_of_retries,
        "worker_name": labels(job.worker_name or ""),
        "dependency_ids": sorted(labels(decode(i)) for i in job.dependency_ids),
        "times": {name: getattr(job, name) is not None for name in ("enqueued_at", "started_at", "ended_at")},
        "latest_result": None
        if latest is None
        else {
            "type": latest.type.name,
            "return_value": latest.return_value,
            "exc": latest.exc_string.strip().splitlines()[-1] if latest.exc_string else None,
            "execution_id": labels(latest.execution_id or ""),
            "worker_name": labels(latest.worker_name or ""),
        },
    }


def dashboard(client: FlaskClient, path: str, name: str, labels: Labels) -> Snapshot:
    """rq-dashboard's JSON for `path` as items named `name`: its HTTP status and its body, ids and times replaced."""
    response = client.get(path, headers=DASHBOARD_AUTH)
    body = scrub(response.get_json(silent=True), labels) if response.status_code == 200 else None
    if isinstance(body, dict) and isinstance(body.get("jobs"), list):  # equal scores list in id order, random here
        body["jobs"].sort(key=lambda job: str(job.get("id")))
    return {(name, "HTTP status"): response.status_code, **{(name, k): v for k, v in flatten(body).items() if k}}


def scrub(value: Any, labels: Labels) -> Any:
    """A JSON value with ids labelled, times replaced, descriptions and tracebacks reduced to their kind."""
    if isinstance(value, dict):
        return {k: scrub_field(k, v, labels) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, labels) for v in value]
    if isinstance(value, str):
        return "<time>" if ISO_TIME.match(value) else labels(value)
    return value


def scrub_field(field: str, value: Any, labels: Labels) -> Any:
    if field == "description" and isinstance(value, str):
        return description_kind(value)
    if field == "exc_info" and isinstance(value, str):
        return value.strip().splitlines()[-1]
    if field in ("total_working_time", "pid") and isinstance(value, int | float):
        return f"<{field}>" if value else 0
    if isinstance(value, str) and field in ("last_heartbeat", "birth_date"):
        return "<time>"
    return scrub(value, labels)


def differences(stock: Snapshot, ours: Snapshot) -> dict[Item, tuple[Any, Any]]:
    """Every item whose value differs, or that only one side has: {item: (stock, ours)}."""
    missing = "<absent>"
    return {
        item: (stock.get(item, missing), ours.get(item, missing))
        for item in sorted(set(stock) | set(ours))
        if stock.get(item, missing) != ours.get(item, missing)
    }


def explained(item: Item, allowed: dict[Item, str]) -> bool:
    """True when an allow-list entry (key and item as shell patterns, e.g. ('rq:job:*', 'attempts')) names `item`."""
    return any(fnmatchcase(item[0], key) and fnmatchcase(item[1], part) for key, part in allowed)


def unexpected(found: dict[Item, tuple[Any, Any]], allowed: dict[Item, str]) -> dict[Item, tuple[Any, Any]]:
    """The differences no allow-list entry explains, nor LEFT_OUT (for an item the service's side lacks)."""
    return {
        item: values
        for item, values in found.items()
        if not explained(item, allowed) and not (values[1] in ("<absent>", "") and explained(item, LEFT_OUT))
    }

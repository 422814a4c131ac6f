"""Task registry: the allow-list of task names that HTTP, the CLI, schedules and workers may run.

A task is a plain function registered with `@task("reports.generate", ...)`.
Clients name tasks; only this registry maps a name to a function. No import
path is ever built from input.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from service.core.config import Limits
from service.core.errors import ConfigError, InternalTask, InvalidField, UnknownTask
from service.core.lanes import LANES

TASK_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
# Tasks under this prefix are internal whatever their registration says (the service's own deliveries).
INTERNAL_PREFIX = "hooks."
DEFAULT_TIMEOUT_SECONDS = 180
DEFAULT_RESULT_TTL_SECONDS = 500
# RQ keeps failed jobs a year by default; a week is enough to look and requeue.
DEFAULT_FAILURE_TTL_SECONDS = 7 * 24 * 3600
EXPONENTIAL_BASE_SECONDS = 10
EXPONENTIAL_CAP_SECONDS = 3600


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed job is run again, and how long to wait before each retry.

    `backoff` is seconds before each retry (the last repeats), or "exponential":
    10 s doubling per retry, capped at an hour, each interval drawn within
    +-25% so that jobs that failed together (an API batch, a burst of
    schedule runs against one dead endpoint) do not retry in lockstep.
    """

    max: int = 0
    backoff: tuple[int, ...] | str = (10, 60, 300)

    @property
    def jittered(self) -> bool:
        """True when every job draws its own intervals (exponential backoff)."""
        return self.max > 0 and isinstance(self.backoff, str)

    def intervals(self) -> list[int]:
        """The seconds to wait before each retry (a fresh draw for exponential backoff)."""
        if isinstance(self.backoff, str):
            return [
                round(min(EXPONENTIAL_BASE_SECONDS * 2**i, EXPONENTIAL_CAP_SECONDS) * random.uniform(0.75, 1.25))
                for i in range(self.max)
            ]
        return list(self.backoff) or [0]

    def to_dict(self) -> dict[str, Any]:
        backoff = self.backoff if isinstance(self.backoff, str) else list(self.backoff)
        return {"max": self.max, "backoff": backoff}


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its public name, its function and its per-job defaults."""

    name: str
    func: Callable[..., Any]
    queue: str = "default"
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    result_ttl_seconds: int = DEFAULT_RESULT_TTL_SECONDS
    failure_ttl_seconds: int = DEFAULT_FAILURE_TTL_SECONDS
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    unique: bool = False
    description: str = ""
    # At most this many jobs of the task run at once across all workers (None: no limit).
    concurrency: int | None = None
    # At most (starts, period_seconds) starts across all workers (None: no limit).
    rate_limit: tuple[int, float] | None = None
    # At most this many jobs of the task run at once per group (a job's `group`) across all workers.
    group_concurrency: int | None = None
    # Failure events of this task are POSTed here (service.ops.hooks); None: no webhook.
    webhook_url: str | None = None
    # Only the service enqueues it (hooks.webhook): the API, the CLI and schedules cannot name it.
    internal: bool = False
    # Checks a client's arguments against the Limits (enqueue, schedule save); raises ValueError to refuse.
    check: Callable[[list[Any], dict[str, Any], Limits], None] | None = None

    def check_request(self, args: list[Any], kwargs: dict[str, Any], limits: Limits, prefix: str = "") -> None:
        """Run the task's own argument check; InvalidField (on `<prefix>args`) when it refuses."""
        if self.check is None:
            return
        try:
            self.check(list(args), dict(kwargs), limits)
        except ValueError as exc:
            raise InvalidField(prefix + "args", str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "queue": self.queue,
            "timeout": self.timeout_seconds,
            "result_ttl": self.result_ttl_seconds,
            "failure_ttl": self.failure_ttl_seconds,
            "retry": self.retry.to_dict(),
            "unique": self.unique,
            "description": self.description,
            "concurrency": self.concurrency,
            "group_concurrency": self.group_concurrency,
            "rate_limit": (
                {"max_starts": self.rate_limit[0], "period_seconds": self.rate_limit[1]} if self.rate_limit else None
            ),
            "webhook": self.webhook_url is not None,
            "internal": self.internal,
        }


class TaskRegistry:
    """Names to TaskSpecs; refuses bad names and a second function under one name."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}

    def add(self, spec: TaskSpec) -> None:
        if not TASK_NAME.fullmatch(spec.name):
            raise ValueError(f"task name {spec.name!r} must be dotted lower-case words, e.g. 'reports.generate'")
        if spec.queue not in LANES:
            raise ValueError(f"task {spec.name!r}: queue {spec.queue!r} is not one of {LANES}")
        existing = self._tasks.get(spec.name)
        if existing and _qualname(existing.func) != _qualname(spec.func):
            raise ValueError(f"task name {spec.name!r} is already registered to {_qualname(existing.func)}")
        self._tasks[spec.name] = spec

    def get(self, name: object) -> TaskSpec:
        """Return the spec registered under `name`; raise UnknownTask otherwise."""
        spec = self._tasks.get(name) if isinstance(name, str) else None
        if spec is None:
            raise UnknownTask(name)
        return spec

    def public(self, name: object, field: str = "task") -> TaskSpec:
        """Return the spec of a task clients may name (API, CLI, schedules); UnknownTask or InternalTask otherwise."""
        spec = self.get(name)
        if spec.internal:
            raise InternalTask(spec.name, field)
        return spec

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._tasks

    def all(self) -> list[TaskSpec]:
        return sorted(self._tasks.values(), key=lambda s: s.name)


def _qualname(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


REGISTRY = TaskRegistry()


def task(
    name: str,
    *,
    queue: str = "default",
    timeout: int = DEFAULT_TIMEOUT_SECONDS,
    result_ttl: int = DEFAULT_RESULT_TTL_SECONDS,
    failure_ttl: int = DEFAULT_FAILURE_TTL_SECONDS,
    retry: RetryPolicy | None = None,
    unique: bool = False,
    concurrency: int | None = None,
    rate_limit: str | tuple[int, float] | None = None,
    group_concurrency: int | None = None,
    webhook_url: str | None = None,
    internal: bool = False,
    check: Callable[[list[Any], dict[str, Any], Limits], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as task `name` with its per-job defaults.

    An `internal` task is enqueued only by the service itself: the API, the
    CLI and schedules refuse its name (422) as they refuse an unknown one.
    `check(args, kwargs, limits)` may refuse a client's arguments (raise ValueError), e.g. a fan-out
    larger than MAX_FANOUT; it runs at enqueue and when a schedule is saved, not in the worker.
    """

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        doc = (func.__doc__ or "").strip().splitlines()
        REGISTRY.add(
            TaskSpec(
                name=name,
                func=func,
                queue=queue,
                timeout_seconds=timeout,
                result_ttl_seconds=result_ttl,
                failure_ttl_seconds=failure_ttl,
                retry=retry or RetryPolicy(),
                unique=unique,
                description=doc[0] if doc else "",
                concurrency=_concurrency(name, concurrency),
                group_concurrency=_concurrency(name, group_concurrency, "group_concurrency"),
                rate_limit=parse_rate_limit(name, rate_limit),
                webhook_url=_webhook_url(name, webhook_url),
                internal=internal or name.startswith(INTERNAL_PREFIX),
                check=check,
            )
        )
        return func

    return register


RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _webhook_url(name: str, value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"task {name!r}: webhook_url must start with http:// or https://")
    return value


def _concurrency(name: str, value: int | None, option: str = "concurrency") -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"task {name!r}: {option} must be a whole number >= 1, got {value!r}")
    return value


def parse_rate_limit(name: str, value: str | tuple[int, float] | None) -> tuple[int, float] | None:
    """Return (max starts, period seconds) from '10/s', '100/m', '5/2s' or a tuple; ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smh])\s*", value)
        if not match:
            raise ValueError(f"task {name!r}: rate_limit {value!r} must look like '10/s', '100/m' or '5/2s'")
        count, amount, unit = match.groups()
        value = (int(count), float(amount or 1) * RATE_UNITS[unit])
    count, period = value
    if not isinstance(count, int) or count < 1 or not period or period <= 0:
        raise ValueError(f"task {name!r}: rate_limit needs at least 1 start per positive period, got {value!r}")
    return (count, float(period))


def load_task_modules(modules: Iterable[str]) -> None:
    """Import each module so that its @task functions register; ConfigError if one fails."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is a configuration error
            raise ConfigError(f"TASK_MODULES: cannot import {module!r}: {type(exc).__name__}") from exc

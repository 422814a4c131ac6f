"""Command-line interface: one click group, one small function per command.

Commands call the same domain functions as the HTTP views and print JSON
(or a short table). Exit codes: 0 done, 1 the service said no (unknown id,
conflict), 2 bad usage or configuration, 3 Redis unavailable.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from redis import Redis
from redis.exceptions import RedisError

from service.config import Settings
from service.connection import connect
from service.errors import ConfigError, InvalidField, ServiceError
from service.task_registry import REGISTRY, load_task_modules


class Context:
    """Settings and a lazily made Redis client for one CLI invocation."""

    def __init__(self) -> None:
        self._connection: Redis | None = None
        self.settings: Settings | None = None

    def load(self) -> None:
        if self.settings is None:
            self.settings = Settings.from_env(role="cli")
            load_task_modules(self.settings.task_modules)

    @property
    def connection(self) -> Redis:
        self.load()
        assert self.settings is not None
        if self._connection is None:
            self._connection = connect(self.settings.redis_url, role="web")
        return self._connection


pass_context = click.make_pass_decorator(Context, ensure=True)


@contextmanager
def service_errors() -> Iterator[None]:
    """Turn service and Redis errors into a one-line message and the exit codes above."""
    try:
        yield
    except ConfigError as exc:
        fail(f"configuration error: {exc.message}", 2)
    except InvalidField as exc:
        fail(exc.message, 2)
    except ServiceError as exc:
        fail(exc.message, 1)
    except RedisError as exc:
        fail(f"Redis unavailable ({type(exc).__name__})", 3)


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def command(group: click.Group, name: str) -> Callable[[Callable[..., Any]], click.Command]:
    """Register a command on `group` whose service errors become exit codes."""

    def decorate(func: Callable[..., Any]) -> click.Command:
        @functools.wraps(func)  # keeps click's parameters attached to func
        def run(*args: Any, **kwargs: Any) -> Any:
            with service_errors():
                return func(*args, **kwargs)

        return group.command(name)(run)

    return decorate


@click.group()
def cli() -> None:
    """Operate the queue service: jobs, queues, workers, tasks and schedules."""


@command(cli, "tasks")
@pass_context
def tasks(ctx: Context) -> None:
    """List the registered tasks with their defaults."""
    ctx.load()
    echo_json([spec.to_dict() for spec in REGISTRY.all()])


def parse_value(text: str) -> Any:
    """Read a command-line argument as JSON when it is JSON (1, true, [1]), else as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@command(cli, "enqueue")
@click.argument("task")
@click.argument("args", nargs=-1)
@click.option("--kwarg", "kwargs", multiple=True, metavar="NAME=VALUE", help="A keyword argument (repeatable).")
@click.option("--queue", default=None, help="Lane: high, default or low (default: the task's).")
@click.option("--delay", type=float, default=None, help="Seconds to wait before the job may start.")
@click.option("--retry", "retries", type=int, default=None, help="Retries after a failure (exponential backoff).")
@click.option("--idempotency-key", default=None, help="Return the existing job for a repeated key.")
@pass_context
def enqueue_command(
    ctx: Context,
    task: str,
    args: tuple[str, ...],
    kwargs: tuple[str, ...],
    queue: str | None,
    delay: float | None,
    retries: int | None,
    idempotency_key: str | None,
) -> None:
    """Enqueue TASK with ARGS (each read as JSON when it is JSON) and print the job."""
    from service.enqueue import enqueue
    from service.jobs import describe
    from service.schemas import JobRequest, validate

    pairs = [k.split("=", 1) for k in kwargs]
    if any(len(p) != 2 for p in pairs):
        raise InvalidField("kwarg", "write keyword arguments as NAME=VALUE")
    body: dict[str, Any] = {
        "task": task,
        "args": [parse_value(a) for a in args],
        "kwargs": {k: parse_value(v) for k, v in pairs},
        "queue": queue,
        "delay": delay,
        "idempotency_key": idempotency_key,
    }
    if retries is not None:
        body["retry"] = {"max": retries}
    job, _ = enqueue(ctx.connection, validate(JobRequest, {k: v for k, v in body.items() if v is not None}))
    echo_json(describe(job))


@command(cli, "job")
@click.argument("job_id")
@pass_context
def job_command(ctx: Context, job_id: str) -> None:
    """Print one job."""
    from service.jobs import describe, fetch

    echo_json(describe(fetch(ctx.connection, job_id)))


@command(cli, "cancel")
@click.argument("job_id")
@pass_context
def cancel_command(ctx: Context, job_id: str) -> None:
    """Cancel a queued, scheduled or deferred job, or stop a running one."""
    from service.jobs import cancel, describe

    echo_json(describe(cancel(ctx.connection, job_id)))


@command(cli, "requeue")
@click.argument("job_id", required=False)
@click.option("--all-failed", is_flag=True, help="Requeue every failed job of every lane.")
@pass_context
def requeue_command(ctx: Context, job_id: str | None, all_failed: bool) -> None:
    """Requeue a failed job (or --all-failed)."""
    from service.jobs import describe, requeue, requeue_all_failed

    if all_failed == bool(job_id):
        raise InvalidField("job_id", "give a job id or --all-failed, not both")
    if all_failed:
        echo_json({"requeued": requeue_all_failed(ctx.connection)})
    else:
        echo_json(describe(requeue(ctx.connection, job_id or "")))


@command(cli, "queues")
@pass_context
def queues_command(ctx: Context) -> None:
    """Show per lane how many jobs are queued, started, scheduled, deferred, failed, finished."""
    from service.monitor import queue_counts

    rows = queue_counts(ctx.connection)
    columns = ["name", "queued", "started", "scheduled", "deferred", "failed", "finished", "canceled"]
    click.echo("  ".join(f"{c:>9}" for c in columns))
    for row in rows:
        click.echo("  ".join(f"{row[c]!s:>9}" for c in columns))


@command(cli, "workers")
@pass_context
def workers_command(ctx: Context) -> None:
    """List the live workers."""
    from service.monitor import workers

    echo_json(workers(ctx.connection))


# The schedules group registers itself on `cli` (kept in its own module).
from service import cli_schedules  # noqa: E402, F401

"""CLI base: the click group, its context (settings, one Redis client) and how errors become exit codes.

Commands call the same domain functions as the HTTP views and print JSON
(or a short table). Exit codes: 0 done, 1 the service said no (unknown id,
conflict), 2 bad usage or configuration, 3 Redis unavailable, full or refusing writes.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import click
from redis import Redis
from redis.exceptions import RedisError

from service.core.config import DEV_REDIS_SOCKET, Limits, Settings, dev_redis_dir
from service.core.connection import connect, dev_redis_url
from service.core.errors import ConfigError, InvalidField, ServiceError, redis_refusal
from service.ops import audit
from service.tasks.registry import load_task_modules


class Context:
    """Settings and a lazily made Redis client for one CLI invocation."""

    def __init__(self) -> None:
        self._connection: Redis | None = None
        self.settings: Settings | None = None

    def load(self) -> None:
        if self.settings is None:
            self.settings = Settings.from_env(environment(), role="cli")
            load_task_modules(self.settings.task_modules)

    @property
    def connection(self) -> Redis:
        self.load()
        assert self.settings is not None
        if self._connection is None:
            self._connection = connect(self.settings.redis_url, role="web")
        return self._connection

    @property
    def limits(self) -> Limits:
        self.load()
        assert self.settings is not None
        return self.settings.limits

    def audit(self, action: str, target: str) -> None:
        """Record a state change made from the command line (principal `cli:<user>`, status 0: its exit code)."""
        event = audit.AuditEvent(
            principal=f"cli:{getpass.getuser()}",
            action=action,
            target=target,
            status=0,
            remote_addr=socket.gethostname(),
            request_id=uuid.uuid4().hex,
        )
        audit.record(self.connection, event, self.limits.audit_events)


def environment() -> Mapping[str, str]:
    """The environment, with `make run`'s embedded Redis as REDIS_URL when REDIS_URL is unset and that Redis answers.

    So the CLI works in a second terminal beside `make run`, as the README shows it.
    """
    if os.environ.get("REDIS_URL"):
        return os.environ
    url = dev_redis_url()
    if url is None:
        raise ConfigError(
            f"REDIS_URL: not set, and no `make run` Redis answers at {dev_redis_dir() / DEV_REDIS_SOCKET}; "
            "set REDIS_URL, or start `make run` in this folder"
        )
    return {**os.environ, "REDIS_URL": url}


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
        fail(redis_refusal(exc).message, 3)


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback that draws a bar on standard error when that is a terminal.

    In a script or a pipe (standard error not a terminal) it draws and prints nothing.
    """
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    bars: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bar = click.progressbar(
                length=total,
                label=label,
                file=sys.stderr,
                show_pos=True,
                show_percent=True,
                update_min_steps=max(1, total // 200),  # redraw about 200 times, whatever the length
            )
            bars.append(bar.__enter__())
        bars[0].update(done - bars[0].pos)

    try:
        yield progress
    finally:
        if bars:
            bars[0].render_finish()


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


def list_command(
    group: click.Group,
    noun: str,
    fetch: Callable[..., dict[str, Any]],
    header: str,
    row: Callable[[dict[str, Any]], str],
    doc: str,
) -> click.Command:
    """Register `<group> list`: one page of `fetch` (the API's paging: --cursor, --limit) as a table or JSON."""

    @click.option("--cursor", default=None, help="Start after this id (from a previous page).")
    @click.option("--limit", type=int, default=None, help=f"At most this many {noun} (default 100).")
    @click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
    @pass_context
    def run(ctx: Context, cursor: str | None, limit: int | None, as_json: bool) -> None:
        cap = ctx.limits.page_size
        page = fetch(ctx.connection, cursor, min(100, cap) if limit is None else limit, max_page=cap)
        if as_json:
            echo_json(page)
            return
        click.echo(header)
        for item in page[noun]:
            click.echo(row(item))
        if page["next_cursor"]:
            click.echo(f"(more: --cursor {page['next_cursor']})")

    run.__doc__ = doc
    return command(group, "list")(run)


@click.group()
def cli() -> None:
    """Operate the queue service: jobs, queues, workers, tasks, schedules and calendars."""


def parse_value(text: str) -> Any:
    """Read a command-line argument as JSON when it is JSON (1, true, [1]), else as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text

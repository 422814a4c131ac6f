"""`python -m service schedules ...`: list, add, rm, pause, resume, run, runs, preview, backfill and sync schedules.

Each command calls the same domain functions as the HTTP views
(service.schedules.operations) and prints JSON, or a short table for `list`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from service.cli.base import Context, cli, command, echo_json, list_command, parse_value, pass_context, progress_bar
from service.core.errors import ConfigError, InvalidField
from service.schedules import operations as domain


@cli.group("schedules")
def schedules() -> None:
    """Recurring work: cron (with a time zone), interval and one-shot schedules."""


def spec_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options that describe a schedule body (shared by add and preview)."""
    options = [
        click.option("--task", default=None, help="A registered task name, e.g. diag.echo."),
        click.option("--cron", default=None, help="Five cron fields, e.g. '0 3 * * *'."),
        click.option("--timezone", default=None, help="IANA zone of the cron times (default UTC)."),
        click.option("--interval", type=int, default=None, help="Seconds between runs (no drift)."),
        click.option("--at", default=None, help="One-shot time, ISO 8601 with offset."),
        click.option("--queue", default=None, help="Lane: high, default or low (default: the task's)."),
        click.option("--arg", "args", multiple=True, help="A positional argument, read as JSON when it is JSON."),
        click.option("--kwarg", "kwargs", multiple=True, metavar="NAME=VALUE", help="A keyword argument."),
        click.option("--skip-calendar", "skip_calendars", multiple=True, help="A calendar whose dates it skips."),
        click.option("--skip-date", "skip_dates", multiple=True, help="A date it skips, YYYY-MM-DD."),
        click.option("--group", default=None, help="Fair-share group of its runs within the lane (e.g. an account)."),
        click.option("--json", "extra", default=None, help='Other fields as JSON, e.g. {"jitter": 5}.'),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def body_from(options: dict[str, Any]) -> dict[str, Any]:
    """Return the schedule body the spec options describe."""
    pairs = [k.split("=", 1) for k in options.pop("kwargs")]
    if any(len(p) != 2 for p in pairs):
        raise InvalidField("kwarg", "write keyword arguments as NAME=VALUE")
    lists = ("args", "extra", "skip_calendars", "skip_dates")
    body: dict[str, Any] = {k: v for k, v in options.items() if v is not None and k not in lists}
    for name in ("skip_calendars", "skip_dates"):
        if options[name]:
            body[name] = list(options[name])
    if options["args"]:
        body["args"] = [parse_value(a) for a in options["args"]]
    if pairs:
        body["kwargs"] = {k: parse_value(v) for k, v in pairs}
    if options["extra"]:
        try:
            extra = json.loads(options["extra"])
        except ValueError:
            raise InvalidField("json", "is not valid JSON") from None
        if not isinstance(extra, dict):
            raise InvalidField("json", "must be a JSON object")
        body.update(extra)
    return body


def _schedule_row(item: dict[str, Any]) -> str:
    trigger = f"cron {item['cron']}" if item["cron"] else f"every {item['interval']}s" if item["interval"] else "at"
    state = "paused" if item["paused"] else "active"
    return f"{item['id']:<30} {trigger:<24} {item['next_run_at'] or '-':<22} {state:<7} {item['task']}"


list_command(
    schedules,
    "schedules",
    domain.list_schedules,
    f"{'id':<30} {'trigger':<24} {'next_run_at':<22} {'state':<7} task",
    _schedule_row,
    "List schedules with their trigger, next run and state.",
)


@command(schedules, "add")
@click.argument("schedule_id")
@spec_options
@pass_context
def add_command(ctx: Context, schedule_id: str, **options: Any) -> None:
    """Create or replace schedule SCHEDULE_ID and print it."""
    data, created = domain.upsert(ctx.connection, schedule_id, body_from(options), origin="api", limits=ctx.limits)
    ctx.audit("schedule.put", schedule_id)
    click.echo("created" if created else "saved", err=True)
    echo_json(data)


@command(schedules, "rm")
@click.argument("schedule_id")
@pass_context
def rm_command(ctx: Context, schedule_id: str) -> None:
    """Remove schedule SCHEDULE_ID."""
    domain.delete(ctx.connection, schedule_id)
    ctx.audit("schedule.delete", schedule_id)
    click.echo(f"removed {schedule_id}")


@command(schedules, "pause")
@click.argument("schedule_id")
@click.option("--note", default="", help="Why it is paused (shown with the schedule).")
@pass_context
def pause_command(ctx: Context, schedule_id: str, note: str) -> None:
    """Pause schedule SCHEDULE_ID."""
    paused = domain.pause(ctx.connection, schedule_id, note=note)
    ctx.audit("schedule.pause", schedule_id)
    echo_json(paused)


@command(schedules, "resume")
@click.argument("schedule_id")
@pass_context
def resume_command(ctx: Context, schedule_id: str) -> None:
    """Resume schedule SCHEDULE_ID from its next due time."""
    resumed = domain.resume(ctx.connection, schedule_id)
    ctx.audit("schedule.resume", schedule_id)
    echo_json(resumed)


@command(schedules, "run")
@click.argument("schedule_id")
@pass_context
def run_command(ctx: Context, schedule_id: str) -> None:
    """Enqueue one run of SCHEDULE_ID now and print its job."""
    job = domain.run_now(ctx.connection, schedule_id)
    ctx.audit("schedule.run", schedule_id)
    echo_json(job)


@command(schedules, "runs")
@click.argument("schedule_id")
@click.option("--limit", type=int, default=20, help="At most this many runs.")
@pass_context
def runs_command(ctx: Context, schedule_id: str, limit: int) -> None:
    """Show the recent runs of SCHEDULE_ID."""
    echo_json(domain.runs(ctx.connection, schedule_id, limit))


@command(schedules, "preview")
@click.argument("schedule_id", required=False)
@click.option("--count", type=int, default=10, help="How many due times.")
@spec_options
@pass_context
def preview_command(ctx: Context, schedule_id: str | None, count: int, **options: Any) -> None:
    """Show the next due times of SCHEDULE_ID, or of the schedule the options describe, in UTC and its zone."""
    if schedule_id:
        result = domain.preview_saved(ctx.connection, schedule_id, count)
    else:
        result = domain.preview_body(ctx.connection, body_from(options), count)
    click.echo(f"time zone {result['timezone']}")
    for item in result["times"]:
        click.echo(f"{item['utc']:<22} {item['local']}")


@command(schedules, "backfill")
@click.argument("schedule_id")
@click.option("--from", "begin", required=True, help="Start of the past range, ISO 8601 with offset.")
@click.option("--to", "end", required=True, help="End of the past range, ISO 8601 with offset.")
@pass_context
def backfill_command(ctx: Context, schedule_id: str, begin: str, end: str) -> None:
    """Enqueue one run per due time of SCHEDULE_ID in a past range."""
    with progress_bar(f"backfilling {schedule_id}") as progress:
        runs = domain.backfill(ctx.connection, schedule_id, {"from": begin, "to": end}, progress=progress)
    ctx.audit("schedule.backfill", schedule_id)
    echo_json(runs)


@command(schedules, "sync")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@pass_context
def sync_command(ctx: Context, path: str) -> None:
    """Sync a declared schedules file (TOML or YAML) now, as the scheduler does SCHEDULES_FILE at start."""
    from service.schedules.declared import sync

    connection = ctx.connection
    with progress_bar("syncing schedules") as progress:
        try:
            changed = sync(connection, path, progress)
        except ConfigError as exc:  # the file's problem, named by the file rather than by SCHEDULES_FILE
            raise InvalidField(Path(path).name, exc.message.removeprefix("SCHEDULES_FILE: ")) from None
    ctx.audit("schedules.sync", Path(path).name)
    echo_json({name: len(ids) for name, ids in changed.items()})

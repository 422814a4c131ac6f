"""`python -m service calendars ...`: list, put, get and rm the date lists schedules skip.

Each command calls the same domain functions as the HTTP views
(service.schedules.calendars) and prints JSON, or a short table for `list`.
"""

from __future__ import annotations

from pathlib import Path

import click

from service.cli.base import Context, cli, command, echo_json, list_command, pass_context
from service.core.errors import InvalidField
from service.schedules import calendars as domain


@cli.group("calendars")
def calendars() -> None:
    """Calendars: dates on which the schedules that name them fire nothing."""


list_command(
    calendars,
    "calendars",
    domain.list_calendars,
    f"{'id':<30} {'dates':>6} {'used by':>8}  description",
    lambda item: f"{item['id']:<30} {len(item['dates']):>6} {item['used_by']:>8}  {item['description']}",
    "List calendars with their number of dates and of schedules that skip them.",
)


def read_dates(path: str) -> list[str]:
    """The dates in a file: one per line (blank lines and # comments ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidField("dates-file", f"cannot read {path}: {exc}") from None
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


@command(calendars, "put")
@click.argument("calendar_id")
@click.option("--date", "dates", multiple=True, help="A date to skip, YYYY-MM-DD (repeat the option).")
@click.option("--dates-file", default=None, help="A file of dates, one per line.")
@click.option("--description", default="", help="What the dates are, e.g. 'Austrian public holidays'.")
@pass_context
def put_command(
    ctx: Context, calendar_id: str, dates: tuple[str, ...], dates_file: str | None, description: str
) -> None:
    """Create or replace calendar CALENDAR_ID with the dates given (all of them: the old list is replaced)."""
    listed = [*dates, *(read_dates(dates_file) if dates_file else [])]
    data, created = domain.put(ctx.connection, calendar_id, {"dates": listed, "description": description})
    ctx.audit("calendar.put", calendar_id)
    click.echo("created" if created else "saved", err=True)
    echo_json(data)


@command(calendars, "get")
@click.argument("calendar_id")
@pass_context
def get_command(ctx: Context, calendar_id: str) -> None:
    """Show calendar CALENDAR_ID."""
    echo_json(domain.get(ctx.connection, calendar_id))


@command(calendars, "rm")
@click.argument("calendar_id")
@pass_context
def rm_command(ctx: Context, calendar_id: str) -> None:
    """Remove calendar CALENDAR_ID (refused while schedules skip its dates)."""
    domain.delete(ctx.connection, calendar_id)
    ctx.audit("calendar.delete", calendar_id)
    click.echo(f"removed {calendar_id}")

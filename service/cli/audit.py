"""`python -m service audit`: the audit log, newest first (state changes and refused tokens)."""

from __future__ import annotations

import click

from service.cli.base import Context, cli, command, echo_json, pass_context
from service.core.errors import InvalidField
from service.ops import audit

COLUMNS = ("time", "principal", "action", "target", "status", "remote_addr", "request_id")


@command(cli, "audit")
@click.option("--limit", type=int, default=None, help="At most this many events (default 50).")
@click.option("--cursor", default=None, help="Start after this event id (from a previous page).")
@click.option("--json", "as_json", is_flag=True, help="Print the page as JSON.")
@pass_context
def audit_command(ctx: Context, limit: int | None, cursor: str | None, as_json: bool) -> None:
    """Show who changed what (not enqueues) and every refused token, newest first."""
    limit = min(50, ctx.limits.page_size) if limit is None else limit
    if not 1 <= limit <= ctx.limits.page_size:
        raise InvalidField("limit", f"must be 1 to {ctx.limits.page_size} (MAX_PAGE_SIZE)")
    events, next_cursor = audit.list_events(ctx.connection, limit, cursor)
    if as_json:
        echo_json({"events": events, "next_cursor": next_cursor})
        return
    for event in events:
        click.echo("  ".join(str(event.get(column, "")) for column in COLUMNS))
    if next_cursor:
        click.echo(f"(more: --cursor {next_cursor})")

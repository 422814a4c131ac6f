"""Scheduler process: fire due scheduled work into the lanes (`python scheduler.py`)."""

from __future__ import annotations

import logging
import sys

import click

from service.declared import sync
from service.errors import ConfigError
from service.process import start
from service.scheduler import ServiceScheduler

log = logging.getLogger("scheduler")


@click.command()
@click.option("--burst", is_flag=True, help="Run one pass, then quit.")
def main(burst: bool) -> None:
    """Run the scheduler loop; several may run, one leads. Syncs SCHEDULES_FILE first."""
    settings, connection = start("scheduler")
    if settings.schedules_file:
        try:
            changed = sync(connection, settings.schedules_file)
        except ConfigError as exc:
            print(f"scheduler: configuration error: {exc.message}", file=sys.stderr)
            raise SystemExit(2) from None
        log.info("declared schedules synced: %s", {k: len(v) for k, v in changed.items()})
    ServiceScheduler(connection).run(burst=burst)


if __name__ == "__main__":
    main()

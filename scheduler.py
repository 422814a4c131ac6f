"""Scheduler process: fire due scheduled work into the lanes (`python scheduler.py`)."""

from __future__ import annotations

import logging
import sys

import click
from redis import Redis

from service.core.errors import ConfigError
from service.core.outage import Outage
from service.ops.process import start
from service.schedules.declared import sync
from service.schedules.scheduler import ServiceScheduler

log = logging.getLogger("scheduler")


@click.command()
@click.option("--burst", is_flag=True, help="Run one pass, then quit.")
def main(burst: bool) -> None:
    """Run the scheduler loop; several may run, one leads. Syncs SCHEDULES_FILE first."""
    settings, connection = start("scheduler")
    if settings.schedules_file:
        sync_declared(connection, settings.schedules_file)
    ServiceScheduler(connection).run(burst=burst)


def sync_declared(connection: Redis, path: str) -> None:
    """Sync SCHEDULES_FILE; exit 2 on a bad file, wait for Redis if it is not there yet or refuses writes."""
    try:
        outage = Outage(log, "scheduler: syncing the declared schedules")
        changed = outage.retry(lambda: sync(connection, path))
    except ConfigError as exc:
        print(f"scheduler: configuration error: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("declared schedules synced: %s", {k: len(v) for k, v in changed.items()})


if __name__ == "__main__":
    main()

"""Worker process: consume the lanes given, in priority order (`python worker.py high default low`)."""

from __future__ import annotations

import click

from service.lanes import LANES
from service.process import start
from service.queues import get_lanes
from service.workers import ServiceWorker


@click.command()
@click.argument("lanes", nargs=-1, type=click.Choice(LANES))
@click.option("--burst", is_flag=True, help="Quit once the lanes are empty.")
@click.option("--name", default=None, help="Worker name (default: RQ's random name).")
def main(lanes: tuple[str, ...], burst: bool, name: str | None) -> None:
    """Run jobs from LANES (default: high default low), highest priority first."""
    settings, connection = start("worker")
    queues = get_lanes(connection, tuple(dict.fromkeys(lanes)) or LANES)
    worker = ServiceWorker(queues, connection=connection, name=name)
    worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)


if __name__ == "__main__":
    main()

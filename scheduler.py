"""Scheduler process: fire due scheduled work into the lanes (`python scheduler.py`)."""

from __future__ import annotations

import click

from service.process import start
from service.scheduler import ServiceScheduler


@click.command()
@click.option("--burst", is_flag=True, help="Run one pass, then quit.")
def main(burst: bool) -> None:
    """Run the scheduler loop; several may run, one leads."""
    _, connection = start("scheduler")
    ServiceScheduler(connection).run(burst=burst)


if __name__ == "__main__":
    main()

"""Command-line interface: one click group, one small function per command.

Commands call the same domain functions as the HTTP views and print JSON
(or a short table). Exit codes: 0 done, 1 the service said no (unknown id,
conflict), 2 bad usage or configuration, 3 Redis unavailable.
"""

from service.cli import audit, batches, calendars, jobs, schedules  # noqa: F401 - each module registers its commands on `cli`
from service.cli.base import cli

__all__ = ["cli"]

"""Deprecated: `service.schedule_runs.scheduled_for` moved to `service.jobs.context` (and `service`).

Kept so that task modules written for the flat layout keep working.
"""

import warnings

from service.jobs.context import scheduled_for  # noqa: F401

warnings.warn(
    "service.schedule_runs is deprecated: import scheduled_for from the service package",
    DeprecationWarning,
    stacklevel=2,
)

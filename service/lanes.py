"""Deprecated: `service.lanes` moved to `service.core.lanes`.

Kept so that task modules and settings written for the flat layout keep working.
"""

import warnings

from service.core.lanes import LANES, check_lane, lane_for, route  # noqa: F401

warnings.warn(
    "service.lanes is deprecated: import from service.core.lanes (or the service package)",
    DeprecationWarning,
    stacklevel=2,
)

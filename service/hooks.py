"""Deprecated: `service.hooks` moved to `service.ops.hooks`.

Kept so that task modules and settings written for the flat layout keep working.
"""

import warnings

from service.ops.hooks import EVENTS, emit, on, unsubscribe  # noqa: F401

warnings.warn(
    "service.hooks is deprecated: import from service.ops.hooks (or the service package)",
    DeprecationWarning,
    stacklevel=2,
)

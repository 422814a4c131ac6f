"""Deprecated: `service.task_registry` moved to `service.tasks.registry`.

Kept so that task modules and settings written for the flat layout keep working.
"""

import warnings

from service.tasks.registry import REGISTRY, RetryPolicy, TaskSpec, load_task_modules, task  # noqa: F401

warnings.warn(
    "service.task_registry is deprecated: import from service.tasks.registry (or the service package)",
    DeprecationWarning,
    stacklevel=2,
)

"""Per-app objects a view needs: the Redis client, the settings and the waits."""

from __future__ import annotations

from flask import current_app
from redis import Redis

from service.core.config import Settings
from service.jobs.waits import WaitHub


def redis() -> Redis:
    """Return the app's one Redis client."""
    return current_app.extensions["redis"]


def settings() -> Settings:
    """Return the app's settings."""
    return current_app.extensions["settings"]


def waits() -> WaitHub:
    """Return the app's waits (GET /jobs/<id>?wait=)."""
    return current_app.extensions["waits"]

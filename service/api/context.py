"""Per-app objects a view needs: the Redis client and the settings."""

from __future__ import annotations

from flask import current_app
from redis import Redis

from service.core.config import Settings


def redis() -> Redis:
    """Return the app's one Redis client."""
    return current_app.extensions["redis"]


def settings() -> Settings:
    """Return the app's settings."""
    return current_app.extensions["settings"]

"""The service's Flask application factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # workers and the scheduler import this package too, and never need Flask
    from flask import Flask
    from redis import Redis

    from service.config import Settings


def create_app(settings: Settings | None = None, *, connection: Redis | None = None) -> Flask:
    """Build the web app: settings, one Redis client, tasks, auth, the API and the dashboard."""
    from flask import Flask

    from service import api, dashboard, replication
    from service.config import Settings
    from service.connection import connect
    from service.logs import configure_logging
    from service.task_registry import load_task_modules

    settings = settings or Settings.from_env(role="web")
    configure_logging(settings, role="web")
    load_task_modules(settings.task_modules)
    app = Flask(__name__)
    app.extensions["settings"] = settings
    app.extensions["redis"] = connection or connect(settings.redis_url, role="web")
    api.init_app(app)
    replication.init_app(app)
    dashboard.init_app(app, settings)
    return app

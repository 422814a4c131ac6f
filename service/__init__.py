"""A lightweight Redis queue service: the Flask app factory and the names task code uses.

Task modules import what they need from here (`from service import task,
RetryPolicy, route, on, scheduled_for, progress`); each name is loaded on first use, so
a worker or the scheduler that imports this package never loads Flask.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask
    from redis import Redis

    from service.core.config import Settings

# The public names for task code, and the module each one lives in.
PUBLIC = {
    "task": "service.tasks.registry",
    "RetryPolicy": "service.tasks.registry",
    "route": "service.core.lanes",
    "on": "service.ops.hooks",
    "scheduled_for": "service.jobs.context",
    "progress": "service.jobs.context",
}
__all__ = ["create_app", *PUBLIC]


def __getattr__(name: str) -> Any:
    if name in PUBLIC:
        return getattr(import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'service' has no attribute {name!r}")


def create_app(settings: Settings | None = None, *, connection: Redis | None = None) -> Flask:
    """Build the web app: settings, one Redis client, tasks, auth, the API and the dashboard."""
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from service import api
    from service.api import fast, paths
    from service.core import compat
    from service.core.config import Settings
    from service.core.connection import connect
    from service.core.logs import configure_logging
    from service.dashboard import mount as dashboard
    from service.dashboard import origin
    from service.tasks.registry import load_task_modules

    settings = settings or Settings.from_env(role="web")
    configure_logging(settings, role="web")
    compat.check_versions()
    load_task_modules(settings.task_modules)
    app = Flask(__name__)
    app.extensions["settings"] = settings
    app.extensions["redis"] = connection or connect(settings.redis_url, role="web")
    # Request checks run in this order: auth (API, dashboard), path ids (404),
    # then the dashboard's method and same-origin checks of state changes.
    api.init_app(app)
    dashboard.init_app(app, settings)
    paths.init_app(app)
    origin.init_app(app)
    fast.install(app)  # last: it checks the request hooks installed above
    if settings.trusted_proxy_hops:
        # Scheme, host, port, path prefix and client address as the client sent them, from the proxies'
        # headers; in front of the fast path too (its audit events name the client's address).
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)
    return app

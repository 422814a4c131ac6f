"""HTTP API: thin views over the domain layer, mounted by init_app()."""

from __future__ import annotations

from flask import Flask

from service.api import audit, auth, body, errors, jobs, monitor, openapi, paths, schedules, system


def init_app(app: Flask) -> None:
    """Install limits, error handlers, auth and every blueprint on `app`."""
    paths.use_ascii_integers(app)
    body.init_app(app)
    errors.init_app(app)
    audit.init_app(app)  # before auth: a refused request has a request id too
    auth.init_app(app)
    app.register_blueprint(system.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(monitor.bp)
    openapi.init_app(app)

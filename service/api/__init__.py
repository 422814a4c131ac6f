"""HTTP API: thin views over the domain layer, mounted by init_app()."""

from __future__ import annotations

from flask import Flask

from service.api import (
    audit,
    auth,
    batches,
    body,
    calendars,
    errors,
    jobs,
    monitor,
    openapi,
    paths,
    replication,
    schedules,
    system,
)
from service.jobs.waits import WaitHub, max_waits


def init_app(app: Flask) -> None:
    """Install limits, error handlers, auth and every blueprint on `app`."""
    app.extensions["waits"] = WaitHub(app.extensions["redis"], max_waits(app.extensions["settings"].web_threads))
    paths.use_ascii_integers(app)
    body.init_app(app)
    errors.init_app(app)
    # After-request hooks run last-registered first: the audit event is written before the replicas'
    # WAIT, which then covers it too. Its request id is assigned before auth: a refusal has one too.
    replication.init_app(app)
    audit.init_app(app)
    auth.init_app(app)
    app.register_blueprint(system.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(calendars.bp)
    app.register_blueprint(monitor.bp)
    openapi.init_app(app)

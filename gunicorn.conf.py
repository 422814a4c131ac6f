"""gunicorn settings for the web process: bind to $PORT, validate the environment first."""

import os
import signal
import sys

from service.core.config import Settings
from service.core.errors import ConfigError

try:
    _settings = Settings.from_env(role="web")
except ConfigError as exc:
    print(f"web: configuration error: {exc.message}", file=sys.stderr)
    sys.exit(2)

bind = [f"0.0.0.0:{_settings.port}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads, not one request per process: a GET /jobs/<id>?wait= parks a thread on an Event (no Redis
# connection) for up to 60 s while the others keep answering. Threads leave redis-py, RQ and the
# Redis client pool as they are (gevent would monkey-patch them all).
worker_class = "gthread"
threads = _settings.web_threads
timeout = 30
# Heroku gives 30 s between SIGTERM and SIGKILL.
graceful_timeout = 25
# No runtime control socket: several instances (and the tests) share a host.
control_socket_disable = True
# Forwarded headers are the app's to believe (TRUSTED_PROXY_HOPS); gunicorn
# would otherwise take X-Forwarded-Proto from any local peer.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """On SIGTERM, end the process's waits first: each answers with its job as it is instead of being cut off."""
    handle_exit = signal.getsignal(signal.SIGTERM)

    def end_waits_then_exit(signum, frame):  # type: ignore[no-untyped-def]
        worker.wsgi.extensions["waits"].stop()
        handle_exit(signum, frame)

    signal.signal(signal.SIGTERM, end_waits_then_exit)

"""gunicorn settings for the web process: bind to $PORT, validate the environment first."""

import os
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
worker_class = "sync"
timeout = 30
# Heroku gives 30 s between SIGTERM and SIGKILL.
graceful_timeout = 25
# No runtime control socket: several instances (and the tests) share a host.
control_socket_disable = True
# Forwarded headers are the app's to believe (TRUSTED_PROXY_HOPS); gunicorn
# would otherwise take X-Forwarded-Proto from any local peer.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}

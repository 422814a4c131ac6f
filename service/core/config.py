"""Settings: the environment, read once at process start and validated.

Web, worker and scheduler share this one parser. Errors name the variable,
never its value: a Redis URL carries a password.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from redis_sentinel_url import parse_sentinel_url

from service.core.errors import ConfigError

DEFAULT_TASK_MODULES = ("service.tasks.diag", "service.tasks.examples")
ALWAYS_LOADED = ("service.tasks.diag", "service.tasks.webhook")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
# TLS files for rediss:// (a managed Redis, or our own with --tls-port), and
# the redis-py URL parameter each one becomes.
TLS_FILES = {
    "REDIS_TLS_CA_FILE": "ssl_ca_certs",
    "REDIS_TLS_CERT_FILE": "ssl_certfile",
    "REDIS_TLS_KEY_FILE": "ssl_keyfile",
}
# WAIT for replicas after an API write. It must end before the web client's
# 1 s read timeout (service.core.connection), which also keeps a 503 within 3 s.
DEFAULT_REPLICA_ACK_TIMEOUT_MS = 500
MAX_REPLICA_ACK_TIMEOUT_MS = 800
MAX_PROXY_HOPS = 5
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
TOKEN_MIN_LENGTH = 16


# -- OUTBOUND_ALLOW ---------------------------------------------------------
# Tasks that call a URL they were given (service.tasks.outbound) refuse
# loopback, private and other non-public addresses unless listed here.
HOST_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class OutboundAllow:
    """OUTBOUND_ALLOW: host names and networks that outbound calls may reach although they are not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, value: str) -> OutboundAllow:
        """Parse 'hooks.internal,10.0.0.0/8,127.0.0.1'; ConfigError names an entry that is neither."""
        hosts, networks = set(), []
        for entry in filter(None, (part.strip() for part in value.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]")))
                continue
            except ValueError:
                pass
            name = entry.lower().removesuffix(".")
            if "/" in entry or not HOST_NAME.fullmatch(name):
                raise ConfigError(
                    f"OUTBOUND_ALLOW: {entry[:100]!r} is neither a host name nor a network like 10.0.0.0/8"
                )
            hosts.add(name)
        return cls(frozenset(hosts), tuple(networks))


@dataclass(frozen=True)
class Settings:
    """What every process of the service is configured with."""

    redis_url: str
    port: int = 8000
    api_tokens: tuple[str, ...] = ()
    task_modules: tuple[str, ...] = (*ALWAYS_LOADED, "service.tasks.examples")
    schedules_file: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    # WAIT for this many replicas after each API write before answering (0: do not wait).
    min_replicas_ack: int = 0
    replica_ack_timeout_ms: int = DEFAULT_REPLICA_ACK_TIMEOUT_MS
    # Reverse proxies in front of the web process whose X-Forwarded-* headers
    # are believed (werkzeug ProxyFix); 0 believes none.
    trusted_proxy_hops: int = 0
    outbound_allow: OutboundAllow = OutboundAllow()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, role: str = "web") -> Settings:
        """Build settings from the environment; raise ConfigError naming a bad variable.

        The web role needs API tokens; workers and schedulers do not.
        """
        env = os.environ if environ is None else environ
        settings = cls(
            redis_url=_with_tls_files(_redis_url(env.get("REDIS_URL", "")), env),
            port=_port(env.get("PORT", "8000")),
            api_tokens=_tokens(env.get("API_TOKENS", ""), required=role == "web"),
            task_modules=_modules(env.get("TASK_MODULES", "")),
            schedules_file=env.get("SCHEDULES_FILE") or None,
            log_level=_choice("LOG_LEVEL", env.get("LOG_LEVEL", "INFO").upper(), LOG_LEVELS),
            log_format=_choice("LOG_FORMAT", env.get("LOG_FORMAT", "text").lower(), LOG_FORMATS),
            min_replicas_ack=_whole("REDIS_MIN_REPLICAS_ACK", env.get("REDIS_MIN_REPLICAS_ACK", "0"), 0, 10),
            replica_ack_timeout_ms=_whole(
                "REDIS_REPLICA_ACK_TIMEOUT_MS",
                env.get("REDIS_REPLICA_ACK_TIMEOUT_MS", str(DEFAULT_REPLICA_ACK_TIMEOUT_MS)),
                1,
                MAX_REPLICA_ACK_TIMEOUT_MS,
            ),
            trusted_proxy_hops=_whole("TRUSTED_PROXY_HOPS", env.get("TRUSTED_PROXY_HOPS", "0"), 0, MAX_PROXY_HOPS),
            outbound_allow=OutboundAllow.parse(env.get("OUTBOUND_ALLOW", "")),
        )
        if settings.schedules_file and not os.path.isfile(settings.schedules_file):
            raise ConfigError("SCHEDULES_FILE: no such file")
        return settings


def _redis_url(value: str) -> str:
    if not value:
        raise ConfigError("REDIS_URL: required (make run starts an embedded Redis when it is unset)")
    if value.startswith("redis+sentinel://"):
        return _sentinel_url(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("REDIS_URL: not a valid URL") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError("REDIS_URL: must start with redis://, rediss://, unix:// or redis+sentinel://")
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError("REDIS_URL: a unix:// URL needs a socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("REDIS_URL: needs a host name")
    return value


def _sentinel_url(value: str) -> str:
    """Check a redis+sentinel://host:port[,host:port...]/service[/db] URL with redis-sentinel-url's parser."""
    try:
        parsed = parse_sentinel_url(value)
    except (ValueError, TypeError):
        raise ConfigError(
            "REDIS_URL: not a valid redis+sentinel:// URL (host:port[,host:port...]/service[/db])"
        ) from None
    if not parsed.default_client.service:
        raise ConfigError("REDIS_URL: a redis+sentinel:// URL needs the service name (the sentinels' master name)")
    if not all(host for host, _ in parsed.hosts) or not all(0 < port < 65536 for _, port in parsed.hosts):
        raise ConfigError("REDIS_URL: every sentinel needs a host name and a port between 1 and 65535")
    if parsed.default_client.type != "master":
        raise ConfigError("REDIS_URL: the service writes: client_type must be master")
    return value


def _with_tls_files(url: str, env: Mapping[str, str]) -> str:
    """Fold REDIS_TLS_*_FILE into the rediss:// URL as redis-py's ssl_* parameters (checked to exist)."""
    given = {name: env[name] for name in TLS_FILES if env.get(name)}
    if not given:
        return url
    if not url.startswith("rediss://"):
        raise ConfigError(f"{next(iter(given))}: TLS files need a rediss:// REDIS_URL")
    for name, path in given.items():
        if not os.path.isfile(path):
            raise ConfigError(f"{name}: no such file")
    if ("REDIS_TLS_CERT_FILE" in given) != ("REDIS_TLS_KEY_FILE" in given):
        raise ConfigError(
            "REDIS_TLS_KEY_FILE: a client certificate needs both REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE"
        )
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    query.update({TLS_FILES[name]: path for name, path in given.items()})
    return parts._replace(query=urlencode(query)).geturl()


def _whole(name: str, value: str, low: int, high: int) -> int:
    if not (value.strip().isascii() and value.strip().isdigit()) or not low <= int(value) <= high:
        raise ConfigError(f"{name}: must be a whole number between {low} and {high}")
    return int(value)


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError("PORT: must be a whole number between 1 and 65535")
    return int(value)


def _tokens(value: str, *, required: bool) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in value.split(",") if t.strip())
    if required and not tokens:
        raise ConfigError("API_TOKENS: required: at least one bearer token (make run generates one)")
    if any(len(t) < TOKEN_MIN_LENGTH for t in tokens):
        raise ConfigError(f"API_TOKENS: every token must be at least {TOKEN_MIN_LENGTH} characters")
    return tokens


def _modules(value: str) -> tuple[str, ...]:
    modules = tuple(m.strip() for m in value.split(",") if m.strip())
    bad = [m for m in modules if not MODULE_NAME.match(m)]
    if bad:
        raise ConfigError(f"TASK_MODULES: not a module name: {bad[0]!r}")
    # The diagnostic tasks (SPEC §3) and the webhook delivery task are always registered.
    return tuple(dict.fromkeys((*ALWAYS_LOADED, *(modules or DEFAULT_TASK_MODULES))))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}")
    return value

"""Settings: the environment, read once at process start and validated.

Web, worker and scheduler share this one parser. Errors name the variable,
never its value: a Redis URL carries a password.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
DEFAULT_WEB_THREADS = 128
MAX_WEB_THREADS = 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
TOKEN_MIN_LENGTH = 16
# Scopes of an API token, and what each one also grants (admin: everything; operate: read).
SCOPES = ("read", "enqueue", "operate", "admin")
IMPLIED_SCOPES = {"admin": frozenset(SCOPES), "operate": frozenset({"operate", "read"})}
TOKEN_NAME = re.compile(r"[a-z0-9_-]{1,32}")
# `make run` keeps its data in DATA_DIR (default `data`, relative to where it runs) and, when
# REDIS_URL is unset, runs its embedded Redis in DATA_DIR/redis on the unix socket `redis.sock`
# there. The CLI finds that Redis by the same rule.
DEFAULT_DATA_DIR = "data"
DEV_REDIS_SOCKET = "redis.sock"
# A whole number as configuration and query strings give it: ASCII digits only
# (str.isdigit() and int() also take '²' or '٣'), at most 18 of them.
ASCII_WHOLE = re.compile(r"[0-9]{1,18}")


def whole_number(text: str) -> int | None:
    """Return `text` as an int when it is 1-18 ASCII digits and nothing else, else None."""
    return int(text) if ASCII_WHOLE.fullmatch(text) else None


def dev_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`make run`'s data folder: DATA_DIR, or `data` when it is unset or empty."""
    env = os.environ if environ is None else environ
    return Path(env.get("DATA_DIR") or DEFAULT_DATA_DIR)


def dev_redis_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where `make run`'s embedded Redis keeps its AOF, log and socket (DEV_REDIS_SOCKET)."""
    return dev_data_dir(environ) / "redis"


@dataclass(frozen=True)
class ApiToken:
    """One API_TOKENS entry: the principal's name, its scopes and the secret (never printed)."""

    name: str
    scopes: frozenset[str]
    secret: str = field(repr=False)

    def allows(self, scope: str) -> bool:
        """Return True when this token grants `scope` (directly or through admin/operate)."""
        return any(scope in IMPLIED_SCOPES.get(held, {held}) for held in self.scopes)


@dataclass(frozen=True)
class Limits:
    """Caps no single token can exceed (LIMIT_VARIABLES names the variable of each)."""

    queue_length: int = 100_000  # jobs waiting per lane: queued + scheduled + deferred
    schedules: int = 100_000
    timeout_seconds: int = 3600
    result_ttl_seconds: int = 7 * 86400
    ttl_seconds: int = 7 * 86400
    fanout: int = 1000  # users one scrape.dispatch job may fan out to
    page_size: int = 500  # the largest `limit` of a list
    audit_events: int = 100_000  # the audit log keeps about this many events


# Each limit's variable and its allowed range.
LIMIT_VARIABLES = {
    "queue_length": ("MAX_QUEUE_LENGTH", 1, 100_000_000),
    "schedules": ("MAX_SCHEDULES", 1, 10_000_000),
    "timeout_seconds": ("MAX_JOB_TIMEOUT_SECONDS", 1, 7 * 86400),
    "result_ttl_seconds": ("MAX_RESULT_TTL_SECONDS", 0, 366 * 86400),
    "ttl_seconds": ("MAX_JOB_TTL_SECONDS", 1, 366 * 86400),
    "fanout": ("MAX_FANOUT", 1, 100_000),
    "page_size": ("MAX_PAGE_SIZE", 1, 10_000),
    "audit_events": ("AUDIT_MAX_EVENTS", 1000, 10_000_000),
}


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
    # ApiTokens; plain strings given here (tests, code) are parsed like API_TOKENS entries.
    api_tokens: tuple[ApiToken, ...] = ()
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
    # Threads of each web process (gunicorn gthread); a GET /jobs/<id>?wait= holds one while it waits.
    web_threads: int = DEFAULT_WEB_THREADS
    outbound_allow: OutboundAllow = OutboundAllow()
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        if any(isinstance(t, str) for t in self.api_tokens):
            object.__setattr__(self, "api_tokens", _tokens(",".join(map(_entry, self.api_tokens)), required=False))

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
            web_threads=_whole("WEB_THREADS", env.get("WEB_THREADS") or str(DEFAULT_WEB_THREADS), 1, MAX_WEB_THREADS),
            outbound_allow=OutboundAllow.parse(env.get("OUTBOUND_ALLOW", "")),
            limits=_limits(env),
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
    number = whole_number(value.strip())
    if number is None or not low <= number <= high:
        raise ConfigError(f"{name}: must be a whole number between {low} and {high}")
    return number


def _port(value: str) -> int:
    return _whole("PORT", value, 1, 65535)


def _limits(env: Mapping[str, str]) -> Limits:
    given = {
        attr: _whole(name, env[name], low, high) for attr, (name, low, high) in LIMIT_VARIABLES.items() if env.get(name)
    }
    return Limits(**given)


def _entry(token: ApiToken | str) -> str:
    return token if isinstance(token, str) else f"{token.name}:{'+'.join(sorted(token.scopes))}:{token.secret}"


def _tokens(value: str, *, required: bool) -> tuple[ApiToken, ...]:
    """Parse API_TOKENS: comma-separated bare tokens or NAME:SCOPES:TOKEN entries; errors name the entry by position."""
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if required and not entries:
        raise ConfigError("API_TOKENS: required: at least one bearer token (make run generates one)")
    tokens = [_token(position, entry) for position, entry in enumerate(entries, start=1)]
    for position, token in enumerate(tokens, start=1):
        earlier = tokens[: position - 1]
        if any(t.name == token.name for t in earlier):
            raise ConfigError(f"API_TOKENS: entry {position}: the name {token.name!r} is used twice")
        if any(t.secret == token.secret for t in earlier):
            raise ConfigError(f"API_TOKENS: entry {position}: the same token is listed twice")
    return tuple(tokens)


def _token(position: int, entry: str) -> ApiToken:
    """One entry: a bare token (every scope, named token-<sha256 prefix>) or NAME:SCOPES:TOKEN; never echoes it."""
    where = f"API_TOKENS: entry {position}"
    if ":" not in entry:
        name, scopes, secret = bare_token_name(entry), frozenset(SCOPES), entry
    else:
        parts = entry.split(":", 2)
        if len(parts) < 3 or not TOKEN_NAME.fullmatch(parts[0]):
            raise ConfigError(f"{where}: write NAME:SCOPES:TOKEN, NAME being 1-32 of a-z, 0-9, '_' and '-'")
        name, scope_list, secret = parts
        scopes = frozenset(scope_list.split("+"))
        if not scopes <= set(SCOPES):
            raise ConfigError(f"{where} ({name}): SCOPES must be {', '.join(SCOPES)}, joined by +")
    if len(secret) < TOKEN_MIN_LENGTH:
        raise ConfigError(f"{where}: every token must be at least {TOKEN_MIN_LENGTH} characters")
    return ApiToken(name, scopes, secret)


def bare_token_name(secret: str) -> str:
    """The principal name of a bare token: `token-` and the first 8 hex digits of its SHA-256 (stable, not secret)."""
    return "token-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def _modules(value: str) -> tuple[str, ...]:
    modules = tuple(m.strip() for m in value.split(",") if m.strip())
    bad = [m for m in modules if not MODULE_NAME.fullmatch(m)]
    if bad:
        raise ConfigError(f"TASK_MODULES: not a module name: {bad[0]!r}")
    # The diagnostic tasks and the webhook delivery task are always registered.
    return tuple(dict.fromkeys((*ALWAYS_LOADED, *(modules or DEFAULT_TASK_MODULES))))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name}: must be one of {', '.join(allowed)}")
    return value

"""Settings: the environment, read once at process start and validated.

Web, worker and scheduler share this one parser. Errors name the variable,
never its value: a Redis URL carries a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.errors import ConfigError

DEFAULT_TASK_MODULES = ("service.tasks.diag", "service.tasks.examples")
ALWAYS_LOADED = ("service.tasks.diag", "service.hooks")
REDIS_SCHEMES = ("redis", "rediss", "unix")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
TOKEN_MIN_LENGTH = 16


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, role: str = "web") -> Settings:
        """Build settings from the environment; raise ConfigError naming a bad variable.

        The web role needs API tokens; workers and schedulers do not.
        """
        env = os.environ if environ is None else environ
        settings = cls(
            redis_url=_redis_url(env.get("REDIS_URL", "")),
            port=_port(env.get("PORT", "8000")),
            api_tokens=_tokens(env.get("API_TOKENS", ""), required=role == "web"),
            task_modules=_modules(env.get("TASK_MODULES", "")),
            schedules_file=env.get("SCHEDULES_FILE") or None,
            log_level=_choice("LOG_LEVEL", env.get("LOG_LEVEL", "INFO").upper(), LOG_LEVELS),
            log_format=_choice("LOG_FORMAT", env.get("LOG_FORMAT", "text").lower(), LOG_FORMATS),
        )
        if settings.schedules_file and not os.path.isfile(settings.schedules_file):
            raise ConfigError("SCHEDULES_FILE: no such file")
        return settings


def _redis_url(value: str) -> str:
    if not value:
        raise ConfigError("REDIS_URL: required (make run starts an embedded Redis when it is unset)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("REDIS_URL: not a valid URL") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError("REDIS_URL: must start with redis://, rediss:// or unix://")
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError("REDIS_URL: a unix:// URL needs a socket path")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("REDIS_URL: needs a host name")
    return value


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

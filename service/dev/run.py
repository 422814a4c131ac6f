"""Development runner behind `make run`: embedded Redis, a dev token, then honcho on the Procfile."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from service.dev.embedded_redis import EmbeddedRedis

# The data folder is project-local and git-ignored; DATA_DIR moves it (tests do).
DATA_DIR = Path(os.environ.get("DATA_DIR", "data"))
TOKEN_FILE = DATA_DIR / "dev-token"


def dev_token() -> str:
    """Return the development token kept in data/dev-token, creating it on first use."""
    DATA_DIR.mkdir(exist_ok=True)
    if not TOKEN_FILE.exists():
        TOKEN_FILE.write_text(secrets.token_urlsafe(24) + "\n")
        TOKEN_FILE.chmod(0o600)
    return TOKEN_FILE.read_text().strip()


def running_embedded(redis: EmbeddedRedis) -> bool:
    """Return True when an embedded Redis from an earlier run still answers on our socket."""
    if not redis.use_socket or not redis.socket_path.exists():
        return False
    try:
        return bool(Redis.from_url(redis.url, socket_timeout=0.5).ping())
    except RedisError:
        return False


def banner(port: str, token: str, redis_note: str) -> str:
    base = f"http://localhost:{port}"
    return "\n".join(
        [
            "",
            f"  API:        {base}   (OpenAPI: {base}/openapi.json)",
            f"  Dashboard:  {base}/dashboard/   (any user name, password = the token)",
            f"  Token:      {token}",
            f"  Redis:      {redis_note}",
            "",
            f"  curl -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\",
            f'       -d \'{{"task":"diag.echo","args":[1]}}\' {base}/jobs',
            "",
        ]
    )


def main() -> int:
    """Start the whole service in the foreground; Ctrl-C stops all of it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("PORT", "8000")
    redis = None
    if not env.get("REDIS_URL"):
        redis = EmbeddedRedis(DATA_DIR / "redis", use_socket=True)
        if running_embedded(redis):
            redis_note = f"embedded, already running ({redis.url})"
            redis = None
        else:
            redis.start()
            redis_note = f"embedded {redis.server}, AOF on, data in {DATA_DIR / 'redis'} ({redis.url})"
        env["REDIS_URL"] = redis.url if redis else EmbeddedRedis(DATA_DIR / "redis", use_socket=True).url
    else:
        redis_note = "REDIS_URL from the environment"
    token = env.get("API_TOKENS", "").split(",")[0].strip() or dev_token()
    env.setdefault("API_TOKENS", token)
    print(banner(env["PORT"], token, redis_note), flush=True)
    honcho = Path(sys.executable).with_name("honcho")
    process = subprocess.Popen([str(honcho), "start", "-f", "Procfile"], env=env)
    # Ctrl-C or SIGTERM: honcho stops its processes (it ignores a second request).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: process.terminate())
    try:
        return process.wait()
    finally:
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())

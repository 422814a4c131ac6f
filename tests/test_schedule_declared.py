"""The declared-schedules file (SCHEDULES_FILE): idempotent sync, removal of what it no longer declares."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from redis import Redis

import service.tasks.diag  # noqa: F401 - registers diag.*
from service.cli.main import cli
from service.core.errors import ConfigError
from service.core.keys import ScheduleKeys
from service.schedules import operations as schedules
from service.schedules.declared import sync

pytestmark = pytest.mark.matrix

TOML = """
[schedules.nightly]
task = "diag.echo"
cron = "0 3 * * *"
timezone = "Europe/Vienna"
kwargs = { period = "daily" }

[schedules.heartbeat]
task = "diag.echo"
interval = 30
start_at = 2030-01-01T00:00:00Z
"""

YAML = """
schedules:
  nightly:
    task: diag.echo
    cron: "0 3 * * *"
    timezone: Europe/Vienna
    kwargs: {period: daily}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def snapshot(connection: Redis) -> dict[str, object]:
    """Everything the schedule store holds, to compare before and after."""
    keys = sorted(k.decode() for k in connection.keys("svc:schedule*"))
    return {key: connection.dump(key) for key in keys} | {"due": connection.zrange(ScheduleKeys.due, 0, -1, True)}


def test_syncing_the_same_file_twice_changes_nothing(connection: Redis, tmp_path: Path) -> None:
    path = write(tmp_path, "schedules.toml", TOML)
    first = sync(connection, path)
    assert sorted(first["created"]) == ["heartbeat", "nightly"]
    before = snapshot(connection)
    assert sync(connection, path) == {"created": [], "updated": [], "removed": []}
    assert sync(connection, path) == {"created": [], "updated": [], "removed": []}
    assert snapshot(connection) == before
    nightly = schedules.get(connection, "nightly")
    assert nightly["origin"] == "file" and nightly["kwargs"] == {"period": "daily"}
    assert schedules.get(connection, "heartbeat")["start_at"] == "2030-01-01T00:00:00Z"


def test_yaml_declares_the_same_schedule_as_toml(connection: Redis, tmp_path: Path) -> None:
    sync(connection, write(tmp_path, "a.toml", TOML))
    from_toml = schedules.get(connection, "nightly")
    assert sync(connection, write(tmp_path, "b.yaml", YAML))["removed"] == ["heartbeat"]
    assert schedules.get(connection, "nightly") == from_toml


def test_file_schedules_no_longer_declared_are_removed_but_api_ones_stay(connection: Redis, tmp_path: Path) -> None:
    sync(connection, write(tmp_path, "s.toml", TOML))
    schedules.upsert(connection, "from-api", {"task": "diag.echo", "interval": 60})
    result = sync(connection, write(tmp_path, "s.toml", TOML.split("[schedules.heartbeat]")[0]))
    assert result["removed"] == ["heartbeat"]
    ids = [s["id"] for s in schedules.list_schedules(connection)["schedules"]]
    assert ids == ["from-api", "nightly"]


def test_an_operator_pause_survives_a_resync(connection: Redis, tmp_path: Path) -> None:
    path = write(tmp_path, "s.toml", TOML)
    sync(connection, path)
    schedules.pause(connection, "nightly", note="investigating")
    sync(connection, path)
    assert schedules.get(connection, "nightly")["paused"] is True


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[schedules.bad]\ntask = "diag.echo"\ncron = "0 3 * *"\n', ["'bad'", "cron"]),
        ('[schedules."no spaces"]\ntask = "diag.echo"\ninterval = 5\n', ["'no spaces'", "id"]),
        ('[schedules.x]\ntask = "os.system"\ninterval = 5\n', ["'x'", "task"]),
        ("[schedules.x\n", ["cannot read"]),
        ("other = 1\n", ["schedules"]),
        ('[schedules.x]\ntask = "diag.echo"\ninterval = 5\nargs = [inf]\n', ["'x'", "args", "finite"]),
        ('[schedules.x]\ntask = "diag.echo"\ninterval = 5\nargs = [07:32:00]\n', ["'x'", "args", "time"]),
    ],
)
def test_an_invalid_file_is_refused_whole_naming_the_problem(
    connection: Redis, tmp_path: Path, text: str, words: list[str]
) -> None:
    path = write(tmp_path, "bad.toml", TOML + text if "schedules." in text else text)
    with pytest.raises(ConfigError) as caught:
        sync(connection, path)
    assert all(word in caught.value.message for word in words), caught.value.message
    assert connection.keys("svc:*") == []


def test_cli_add_list_pause_resume_run_rm(connection: Redis, redis_url: str) -> None:
    runner = CliRunner()
    env = {"REDIS_URL": redis_url, "TASK_MODULES": "service.tasks.diag"}

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["schedules", *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("add", "cli-1", "--task", "diag.echo", "--interval", "60", "--arg", "1", "--json", '{"jitter": 2}')
    assert "cli-1" in run("list") and "every 60s" in run("list")
    assert '"paused": true' in run("pause", "cli-1", "--note", "n")
    assert '"paused": false' in run("resume", "cli-1")
    assert '"schedule_id": "cli-1"' in run("run", "cli-1")
    assert "03:00:00+02:00" in run(
        "preview", "--task", "diag.echo", "--cron", "30 2 * * *", "--timezone", "Europe/Vienna", "--count", "400"
    )
    run("rm", "cli-1")
    missing = runner.invoke(cli, ["schedules", "rm", "cli-1"], env=env)
    assert missing.exit_code == 1 and "no schedule" in missing.output
    invalid = runner.invoke(cli, ["schedules", "add", "x", "--task", "diag.echo"], env=env)
    assert invalid.exit_code == 2 and "cron, interval or at" in invalid.output

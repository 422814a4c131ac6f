"""A schedule's `group`: its runs share their lane fairly with the other groups, like jobs that carry one."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from redis import Redis

from service.cli.main import cli
from service.core.keys import ScheduleKeys
from service.jobs.model import ServiceJob
from service.schedules import operations as schedules
from tests.conftest import AUTH
from tests.helpers import wait_until
from tests.processes import Processes
from tests.worker_fixtures import start_worker

pytestmark = pytest.mark.matrix  # a fault or scheduler test: make test runs it on every server


def lane_groups(client: FlaskClient, lane: str = "default") -> int:
    queues = client.get("/queues", headers=AUTH).get_json()["queues"]
    return int(next(q for q in queues if q["name"] == lane)["groups"])


def test_a_schedule_takes_a_group_reads_it_back_and_its_runs_carry_it(client: FlaskClient, connection: Redis) -> None:
    body = {"task": "diag.echo", "args": ["hi"], "interval": 3600}
    created = client.put("/schedules/acct-7-echo", json={**body, "group": "acct-7"}, headers=AUTH)
    assert created.status_code == 201 and created.get_json()["group"] == "acct-7"
    assert client.put("/schedules/plain", json=body, headers=AUTH).get_json()["group"] is None
    assert client.get("/schedules/acct-7-echo", headers=AUTH).get_json()["group"] == "acct-7"
    for bad in ("no spaces", "", "x" * 65, "a\n"):
        refused = client.put("/schedules/bad", json={**body, "group": bad}, headers=AUTH)
        assert refused.status_code == 422 and "group" in refused.get_json()["error"]["message"]
    assert client.get("/schedules/bad", headers=AUTH).status_code == 404

    run = client.post("/schedules/acct-7-echo/run", headers=AUTH).get_json()
    assert run["group"] == "acct-7"
    job = client.get(f"/jobs/{run['id']}", headers=AUTH).get_json()
    assert job["group"] == "acct-7" and job["status"] == "queued"
    assert lane_groups(client) == 1  # indexed for its turn, as a job posted with the group is
    plain = client.post("/schedules/plain/run", headers=AUTH).get_json()
    assert client.get(f"/jobs/{plain['id']}", headers=AUTH).get_json()["group"] is None


def test_per_user_groups_share_one_stored_template(client: FlaskClient, connection: Redis) -> None:
    for user in range(20):
        body = {"task": "diag.echo", "args": [user], "cron": "0 3 * * *", "group": f"user-{user}"}
        assert client.put(f"/schedules/user-{user}", json=body, headers=AUTH).status_code == 201
    assert connection.hlen(ScheduleKeys.templates) == 1  # the group is kept with the arguments, not the spec
    assert schedules.get(connection, "user-5")["group"] == "user-5"


@pytest.mark.slow
def test_runs_fired_by_the_scheduler_carry_the_group_and_a_worker_runs_them(
    client: FlaskClient, connection: Redis, processes: Processes
) -> None:
    body = {"task": "diag.echo", "args": ["tick"], "interval": 1, "overlap": "allow", "group": "acct-9"}
    assert client.put("/schedules/tick", json=body, headers=AUTH).status_code == 201
    processes.scheduler()
    wait_until(lambda: lane_groups(client) == 1, timeout=30, what="a fired run waiting in its group")
    first = schedules.runs(connection, "tick")["runs"][-1]
    assert ServiceJob.fetch(first["job_id"], connection=connection).group == "acct-9"
    start_worker(processes, "default")
    wait_until(
        lambda: client.get(f"/jobs/{first['job_id']}", headers=AUTH).get_json()["status"] == "finished",
        timeout=30,
        what="the run to finish",
    )
    assert client.get(f"/jobs/{first['job_id']}", headers=AUTH).get_json()["group"] == "acct-9"


def test_the_cli_adds_a_schedule_with_a_group_and_refuses_a_bad_one(process_env: dict[str, str]) -> None:
    runner = CliRunner()
    added = runner.invoke(
        cli, ["schedules", "add", "g", "--task", "diag.echo", "--interval", "60", "--group", "acct-1"], env=process_env
    )
    assert added.exit_code == 0 and json.loads(added.stdout)["group"] == "acct-1"
    refused = runner.invoke(
        cli, ["schedules", "add", "h", "--task", "diag.echo", "--interval", "60", "--group", "a b"], env=process_env
    )
    assert refused.exit_code != 0 and "group" in refused.stderr

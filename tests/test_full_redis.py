"""A full Redis (maxmemory reached, noeviction) or one refusing writes (MISCONF): every write the API or the
CLI is asked for is refused with a code that says which (503 and Retry-After), nothing is written half-way,
reads go on, and the same web process accepts writes again once Redis can write."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import psutil
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from service.core.connection import connect
from service.core.errors import redis_refusal
from service.dev.embedded_redis import EmbeddedRedis, free_port
from service.jobs.model import ServiceJob
from tests.api import HttpApi
from tests.helpers import snapshot, wait_until
from tests.processes import ROOT, Processes

pytestmark = pytest.mark.matrix  # a fault or scheduler test: make test runs it on every server

SCHEDULE = {"task": "diag.echo", "cron": "0 3 * * *"}


def fill(server: EmbeddedRedis, redis: Redis) -> None:
    """Every write that needs memory is refused from now on (noeviction is the service's policy)."""
    redis.config_set("maxmemory", 1)


def make_room(server: EmbeddedRedis, redis: Redis) -> None:
    redis.config_set("maxmemory", 0)


def break_disk(server: EmbeddedRedis, redis: Redis) -> None:
    """Make a snapshot fail (its file's place is taken by a folder): Redis then refuses writes with MISCONF."""
    redis.config_set("save", "3600 1")
    (server.data_dir / "dump.rdb").mkdir()
    redis.bgsave()
    wait_until(lambda: redis.info("persistence")["rdb_last_bgsave_status"] == "err", what="the snapshot to fail")


def fix_disk(server: EmbeddedRedis, redis: Redis) -> None:
    (server.data_dir / "dump.rdb").rmdir()
    wait_until(lambda: _snapshot_saved(redis), what="a snapshot to succeed")
    redis.config_set("save", "")


def _snapshot_saved(redis: Redis) -> bool:
    persistence = redis.info("persistence")
    if persistence["rdb_bgsave_in_progress"]:
        return False
    if persistence["rdb_last_bgsave_status"] == "ok":
        return True
    redis.bgsave()
    return False


Step = Callable[[EmbeddedRedis, Redis], None]
REFUSALS: dict[str, tuple[Step, Step, str]] = {
    "redis_full": (fill, make_room, "Redis is full"),
    "redis_read_only": (break_disk, fix_disk, "Redis refuses writes"),
}


def web_workers(master_pid: int) -> list[int]:
    return sorted(child.pid for child in psutil.Process(master_pid).children())


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("code", REFUSALS)
def test_refused_writes_answer_503_with_retry_after_write_nothing_and_recover_without_a_restart(
    code: str, private_redis: EmbeddedRedis, processes: Processes, process_env: dict[str, str]
) -> None:
    refuse, restore, cli_message = REFUSALS[code]
    redis = connect(private_redis.url, role="worker")
    port = free_port()
    web = processes.web(port, env={"REDIS_URL": private_redis.url})
    api = HttpApi(port)
    job = api.post("/jobs", {"task": "diag.echo", "args": [1]}).body
    assert api.put("/schedules/nightly", SCHEDULE).status == 201
    workers = web_workers(web.pid)

    refuse(private_redis, redis)
    before = snapshot(redis)
    writes = [
        ("POST", "/jobs", {"task": "diag.echo", "args": [2]}),
        ("POST", "/jobs", {"task": "diag.echo", "idempotency_key": "once"}),  # WATCH, then MULTI
        ("POST", "/jobs/batch", {"jobs": [{"task": "diag.echo", "args": [n]} for n in range(50)]}),
        ("POST", f"/jobs/{job['id']}/cancel", None),
        ("PUT", "/schedules/other", SCHEDULE),
        ("POST", "/schedules/nightly/pause", None),
    ]
    for method, path, body in writes:
        answer = api.call(method, path, body)
        assert (answer.status, answer.body["error"]["code"]) == (503, code), (path, answer.body)
        assert int(answer.headers["Retry-After"]) >= 1
    result = cli({**process_env, "REDIS_URL": private_redis.url}, "enqueue", "diag.echo", "3")
    assert result.returncode == 3 and result.stderr.startswith(f"error: {cli_message}"), result.stderr
    assert snapshot(redis) == before

    for path in ("/jobs/" + job["id"], "/jobs?status=queued", "/queues", "/workers", "/schedules/nightly", "/metrics"):
        assert api.get(path).status == 200, path
    assert [j["id"] for j in api.get("/jobs?status=queued").body["jobs"]] == [job["id"]]
    assert api.get("/readyz").status == 200  # every instance shares this Redis: leaving rotation helps nobody

    restore(private_redis, redis)
    again = api.post("/jobs", {"task": "diag.echo", "args": [4]})
    assert again.status == 202, again.body
    assert api.post(f"/jobs/{job['id']}/cancel").body["status"] == "canceled"
    assert cli({**process_env, "REDIS_URL": private_redis.url}, "enqueue", "diag.echo", "5").returncode == 0
    assert web.alive() and web_workers(web.pid) == workers  # the same processes: no restart


def test_a_batch_at_the_memory_limit_is_written_whole_or_refused_whole(
    private_redis: EmbeddedRedis, processes: Processes
) -> None:
    redis = connect(private_redis.url, role="worker")
    port = free_port()
    processes.web(port, env={"REDIS_URL": private_redis.url})
    api = HttpApi(port)
    redis.config_set("maxmemory", redis.info("memory")["used_memory"] + 1_500_000)
    accepted: list[str] = []
    for batch in range(100):
        # Every other batch carries idempotency keys: written in WATCH/MULTI rather than one script call.
        jobs = [{"task": "diag.echo", "args": ["x" * 200]} for _ in range(200)]
        if batch % 2:
            jobs = [{**body, "idempotency_key": f"b{batch}-{n}"} for n, body in enumerate(jobs)]
        before = snapshot(redis)
        answer = api.post("/jobs/batch", {"jobs": jobs})
        if answer.status == 503:
            assert answer.body["error"]["code"] == "redis_full"
            assert snapshot(redis) == before
            break
        assert answer.status == 202, answer.body
        accepted += [job["id"] for job in answer.body["jobs"]]
    else:
        pytest.fail("Redis never filled up")
    assert len(accepted) >= 200
    assert redis.lrange("rq:queue:default", 0, -1) == [job_id.encode() for job_id in accepted]
    stored = ServiceJob.fetch_many(accepted, connection=redis)
    assert all(job is not None and job.get_status() == "queued" and job.args == ["x" * 200] for job in stored)


# Redis 6.2, 7.0 and Valkey 9 wordings, plain and from inside a script (6.2 wraps it, 7.0 and Valkey append to it).
OOM = "command not allowed when used memory > 'maxmemory'."
IN_SCRIPT = "Error running script (call to f_9f0c): @user_script:1: @user_script: 1: -"
MISCONF = "MISCONF Redis is configured to save RDB snapshots, but it is currently not able to persist on disk."
WORDINGS = [
    (OutOfMemoryError(OOM), "redis_full"),
    (OutOfMemoryError(OOM + " script: 9f0c, on @user_script:1."), "redis_full"),
    (ResponseError(IN_SCRIPT + "OOM " + OOM), "redis_full"),
    (ResponseError(MISCONF), "redis_read_only"),
    (ResponseError(MISCONF.replace("Redis", "Valkey") + " script: on @user_script:1."), "redis_read_only"),
    (ResponseError(IN_SCRIPT + MISCONF), "redis_read_only"),
    (ReadOnlyError("You can't write against a read only replica."), "redis_read_only"),
    (RedisConnectionError("max number of clients reached"), "redis_unavailable"),
    (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), "redis_unavailable"),
]


@pytest.mark.parametrize(("error", "code"), WORDINGS)
def test_each_server_wording_of_a_refused_write_gets_its_code(error: Exception, code: str) -> None:
    refusal = redis_refusal(error)  # type: ignore[arg-type]
    assert (refusal.status, refusal.code) == (503, code)

"""Workers on several hosts: a host cut off mid-job has its job recovered by a worker on another host.

The "hosts" are network namespaces the test makes (tests.netns), each linked
to a hub namespace running Redis by a veth pair on a private /30 of the
test's own. The test itself reaches Redis through its unix socket. Where the
kernel refuses network namespaces (no root, no CAP_NET_ADMIN, a sandbox),
the test skips with the reason, under CI too: it depends on kernel
permissions, not on anything the project installs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.dev.embedded_redis import server_binary
from tests.conftest import AUTH, TASK_MODULES, TOKEN
from tests.helpers import wait_until
from tests.netns import Network, unavailable_reason
from tests.processes import Processes
from tests.redis_topology import RedisProcess, server_args

HEARTBEAT_SECONDS = "0.5"


@pytest.fixture
def network() -> Iterator[Network]:
    reason = unavailable_reason()
    if reason is not None:
        print(f"multi-host test skipped: {reason}", file=sys.stderr)
        pytest.skip(reason)
    tag = f"qs{os.getpid() % 100000}"
    net = Network(tag=tag, subnet=os.getpid() % 250)
    try:
        net.add_host("a")
        net.add_host("b")
        yield net
    finally:
        net.remove()


@pytest.fixture
def hub_redis(network: Network, tmp_path: Path) -> Iterator[RedisProcess]:
    """Redis in the hub namespace, listening on the hub end of every link and on a unix socket."""
    socket_dir = Path(tempfile.mkdtemp(prefix="qs"))  # short: AF_UNIX paths are limited
    socket_path = socket_dir / "redis.sock"
    port = 6379
    workdir = tmp_path / "redis"
    workdir.mkdir()
    addresses = [link.hub_address for link in network.links.values()]
    args = server_args(server_binary(), workdir, port, " ".join(addresses))
    args = [*network.run_in("hub"), *args, "--unixsocket", str(socket_path), "--unixsocketperm", "700"]
    args[args.index("--bind") + 1 : args.index("--bind") + 2] = addresses
    server = RedisProcess("hub-redis", args, workdir, port, socket_path=socket_path)
    server.start()
    yield server
    server.stop()
    socket_path.unlink(missing_ok=True)
    socket_dir.rmdir()


def job_field(observer: Redis, job_id: str, name: str) -> str:
    return (observer.hget(f"rq:job:{job_id}", name) or b"").decode()


def test_job_of_a_host_cut_off_mid_job_is_recovered_by_another_host(
    network: Network, hub_redis: RedisProcess, process_env: dict[str, str], tmp_path: Path
) -> None:
    assert hub_redis.socket_path is not None
    local_url = f"unix://{hub_redis.socket_path}"
    observer = connect(local_url, role="worker")
    app = create_app(Settings(redis_url=local_url, api_tokens=(TOKEN,), task_modules=TASK_MODULES))
    client = app.test_client()
    runner = Processes(process_env, tmp_path)

    def start_worker(host: str) -> None:
        url = f"redis://{network.links[host].hub_address}:{hub_redis.port}/0"
        runner.start(
            f"host-{host}",
            *network.run_in(host),
            sys.executable,
            "worker.py",
            "default",
            "--name",
            f"host-{host}",
            "--heartbeat-seconds",
            HEARTBEAT_SECONDS,
            env={"REDIS_URL": url},
        )

    def enqueue_sleep(seconds: float) -> str:
        response = client.post("/jobs", json={"task": "diag.sleep", "args": [seconds]}, headers=AUTH)
        assert response.status_code == 202, response.get_json()
        return response.get_json()["id"]

    try:
        start_worker("a")
        first = enqueue_sleep(4)
        wait_until(lambda: job_field(observer, first, "worker_name") == "host-a", timeout=30, what="host a to start")
        start_worker("b")
        wait_until(lambda: observer.exists("rq:worker:host-b"), timeout=30, what="host b's worker")
        second = enqueue_sleep(1)
        wait_until(lambda: job_field(observer, second, "worker_name") == "host-b", timeout=30, what="host b to start")

        network.cut("a")  # mid-job: host a keeps running its job but can no longer reach Redis
        cut_at = time.monotonic()

        wait_until(lambda: job_field(observer, first, "status") == "finished", timeout=60, what="the recovery")
        print(f"multi-host: host a's job finished on host b {time.monotonic() - cut_at:.1f} s after the cut")
        assert job_field(observer, first, "worker_name") == "host-b"
        assert job_field(observer, second, "status") == "finished"
        assert client.get(f"/jobs/{first}", headers=AUTH).get_json()["status"] == "finished"
        assert all(p.alive() for p in runner.started), "a worker exited"
    except BaseException:
        print(runner.dump_logs())
        raise
    finally:
        runner.stop_all()
        observer.close()

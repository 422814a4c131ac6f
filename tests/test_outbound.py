"""Outbound calls: tasks that call a URL they were given reach only public addresses unless OUTBOUND_ALLOW says so.

Real HTTP servers on loopback stand in for a worker's own network: every
test checks what the server received, not only what the caller was told.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from service.core.config import OutboundAllow
from service.core.errors import ConfigError
from service.tasks import outbound
from service.tasks.outbound import OutboundRefused, fetch, refusal
from tests.api import Api
from tests.helpers import wait_until
from tests.processes import Processes
from tests.redis_topology import make_test_ca


class Server(http.server.ThreadingHTTPServer):
    """Records every request (method, path, Host header) and answers what `reply(path)` says."""

    def __init__(self, host: str, reply: Callable[[str], tuple[int, dict[str, str]]]) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self.reply = reply
        super().__init__((host, 0), Recorder)

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


class Recorder(http.server.BaseHTTPRequestHandler):
    server: Server

    def _answer(self) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Host")))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers = self.server.reply(self.path)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": "0"}.items():
            self.send_header(name, value)
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start HTTP servers on loopback addresses; all are shut down after the test."""
    started: list[Server] = []

    def start(host: str = "127.0.0.1", reply: Callable[[str], tuple[int, dict[str, str]]] | None = None) -> Server:
        server = Server(host, reply or (lambda path: (200, {})))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def allowing() -> Iterator[Callable[[str], None]]:
    """Set OUTBOUND_ALLOW for this process's fence (as worker start does); cleared after the test."""
    yield lambda value: outbound.allow(OutboundAllow.parse(value))
    outbound.allow(OutboundAllow())


def resolving_to(address: str, calls: list[str] | None = None) -> Callable[..., list[tuple[Any, ...]]]:
    """A resolver that answers `address` for every name (a public-looking name pointing into our network)."""

    def resolve(host: str, port: int, **options: Any) -> list[tuple[Any, ...]]:
        if calls is not None:
            calls.append(host)
        return socket.getaddrinfo(address, port, **options)

    return resolve


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("0.1.2.3", "unspecified"),
        ("10.1.2.3", "private"), ("172.31.255.255", "private"), ("192.168.0.1", "private"), ("fd00::1", "private"),
        ("fd00:ec2::254", "private"), ("::ffff:10.0.0.1", "private"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("100.64.0.1", "shared address space (CGNAT)"), ("100.100.100.200", "shared address space (CGNAT)"),
        ("::127.0.0.1", "IPv4-compatible"), ("64:ff9b::7f00:1", "NAT64"), ("2002:7f00:1::", "6to4"),
        ("2001::1", "Teredo"), ("fec0::1", "site-local"),
        ("168.63.129.16", "cloud metadata"), ("192.0.0.192", "cloud metadata"),
        ("192.0.2.1", "reserved"), ("198.18.0.1", "reserved"), ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
    ],
)  # fmt: skip
def test_every_non_public_address_is_refused_by_a_named_rule(address: str, rule: str) -> None:
    assert rule in (refusal(ipaddress.ip_address(address)) or "")


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_loopback_is_refused_by_default_and_nothing_reaches_the_server(serve: Callable[..., Server]) -> None:
    server = serve()
    with pytest.raises(OutboundRefused, match=r"^127\.0\.0\.1 is loopback; list it in OUTBOUND_ALLOW to allow$"):
        fetch(server.url + "/admin")
    assert server.requests == []


def test_a_listed_network_is_reached(serve: Callable[..., Server], allowing: Callable[[str], None]) -> None:
    server = serve()
    allowing("10.0.0.0/8, 127.0.0.1")
    assert fetch(server.url + "/health?x=1").status == 200
    assert server.requests == [("GET", "/health?x=1", f"127.0.0.1:{server.server_address[1]}")]


def test_a_public_looking_name_that_resolves_to_loopback_is_refused(serve: Callable[..., Server]) -> None:
    server = serve()
    with pytest.raises(OutboundRefused, match=r"^127\.0\.0\.1 \(api\.example\.com\) is loopback"):
        fetch(f"http://api.example.com:{server.server_address[1]}/", resolve=resolving_to("127.0.0.1"))
    assert server.requests == []


def test_one_refused_answer_among_public_ones_refuses_the_name(serve: Callable[..., Server]) -> None:
    server = serve()

    def mixed(host: str, port: int, **options: Any) -> list[tuple[Any, ...]]:
        public = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))
        return [public, *socket.getaddrinfo("127.0.0.1", port, **options)]

    with pytest.raises(OutboundRefused, match="is loopback"):
        fetch(f"http://api.example.com:{server.server_address[1]}/", resolve=mixed)
    assert server.requests == []


def test_a_listed_host_name_is_resolved_once_and_keeps_its_name_in_the_host_header(
    serve: Callable[..., Server], allowing: Callable[[str], None]
) -> None:
    server, lookups = serve(), []
    allowing("api.example.com")
    port = server.server_address[1]
    assert fetch(f"http://API.example.com:{port}/x", resolve=resolving_to("127.0.0.1", lookups)).status == 200
    assert lookups == ["api.example.com"]  # one lookup, and the connection went to its (checked) answer
    assert server.requests == [("GET", "/x", f"api.example.com:{port}")]


def test_a_redirect_from_an_allowed_server_to_a_refused_address_is_refused(
    serve: Callable[..., Server], allowing: Callable[[str], None]
) -> None:
    target = serve("127.0.0.2")
    start = serve(reply=lambda path: (302, {"Location": target.url + "/secret"}))
    allowing("127.0.0.1")
    with pytest.raises(OutboundRefused, match=r"^127\.0\.0\.2 is loopback"):
        fetch(start.url + "/")
    assert len(start.requests) == 1 and target.requests == []


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/"])
def test_a_redirect_to_another_scheme_is_refused(
    serve: Callable[..., Server], allowing: Callable[[str], None], location: str
) -> None:
    start = serve(reply=lambda path: (307, {"Location": location}))
    allowing("127.0.0.1")
    with pytest.raises(OutboundRefused, match="not an http:// or https:// URL"):
        fetch(start.url + "/")


def test_redirects_are_followed_a_few_times_at_most(
    serve: Callable[..., Server], allowing: Callable[[str], None]
) -> None:
    loop = serve(reply=lambda path: (302, {"Location": "/again"}))
    allowing("127.0.0.1")
    assert fetch(loop.url + "/", max_redirects=3).status == 302
    assert [path for _, path, _ in loop.requests] == ["/", "/again", "/again", "/again"]


def test_a_proxy_in_the_environment_is_not_used(
    serve: Callable[..., Server], allowing: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, target = serve(), serve("127.0.0.3")
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    allowing("127.0.0.3")
    assert fetch(target.url + "/").status == 200
    assert proxy.requests == [] and len(target.requests) == 1


def test_https_keeps_the_name_for_sni_and_the_certificate_check(
    tmp_path: Path, allowing: Callable[[str], None]
) -> None:
    certificates = make_test_ca(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    seen: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: seen.append(name)  # type: ignore[assignment,misc,return-value]
    listener = socket.create_server(("127.0.0.1", 0))

    def accept_one() -> None:
        conn, _ = listener.accept()
        with conn, pytest.raises(ssl.SSLError):
            context.wrap_socket(conn, server_side=True)

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    allowing("api.example.com")
    with pytest.raises(ssl.SSLCertVerificationError):  # the test CA is not trusted, and it names 127.0.0.1
        fetch(f"https://api.example.com:{listener.getsockname()[1]}/", resolve=resolving_to("127.0.0.1"))
    thread.join(10)
    listener.close()
    assert seen == ["api.example.com"]


@pytest.mark.parametrize("value", ["10.0.0.1/8", "not a host", "http://x", "a..b"])
def test_a_bad_outbound_allow_entry_is_a_config_error_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^OUTBOUND_ALLOW: .* is neither a host name nor a network"):
        OutboundAllow.parse(value)


# -- through a real worker: http.check and the failure webhook ----------------------------------


def test_http_check_of_loopback_fails_naming_the_rule(
    client: FlaskClient, processes: Processes, serve: Callable[..., Server]
) -> None:
    server = serve()
    processes.worker()
    api = Api(client)
    job = api.enqueue(task="http.check", args=[server.url + "/"], retry={"max": 0})
    done = wait_until(lambda: (j := api.job(job["id"]))["status"] == "failed" and j, timeout=30)
    assert done["error"].endswith("OutboundRefused: 127.0.0.1 is loopback; list it in OUTBOUND_ALLOW to allow")
    assert server.requests == []


def test_http_check_reaches_a_network_listed_in_outbound_allow(
    client: FlaskClient, processes: Processes, serve: Callable[..., Server]
) -> None:
    server = serve()
    processes.worker(env={"OUTBOUND_ALLOW": "127.0.0.1"})
    api = Api(client)
    job = api.enqueue(task="http.check", args=[server.url + "/ping"], retry={"max": 0})
    done = wait_until(lambda: (j := api.job(job["id"]))["status"] == "finished" and j, timeout=30)
    assert done["result"]["status"] == 200 and [path for _, path, _ in server.requests] == ["/ping"]


def test_http_check_redirected_to_a_refused_address_fails(
    client: FlaskClient, processes: Processes, serve: Callable[..., Server]
) -> None:
    target = serve("127.0.0.2")
    start = serve(reply=lambda path: (301, {"Location": target.url + "/internal"}))
    processes.worker(env={"OUTBOUND_ALLOW": "127.0.0.1"})
    api = Api(client)
    job = api.enqueue(task="http.check", args=[start.url + "/"], retry={"max": 0})
    done = wait_until(lambda: (j := api.job(job["id"]))["status"] == "failed" and j, timeout=30)
    assert done["error"].endswith("OutboundRefused: 127.0.0.2 is loopback; list it in OUTBOUND_ALLOW to allow")
    assert len(start.requests) == 1 and target.requests == []


def test_a_failure_webhook_to_loopback_is_refused_unless_listed(
    client: FlaskClient, processes: Processes, serve: Callable[..., Server]
) -> None:
    receiver = serve()
    processes.worker(env={"TEST_WEBHOOK_URL": receiver.url + "/hook"})
    api = Api(client)
    api.enqueue(task="testing.fail_with_webhook", args=["disk full"])

    def delivery_retried() -> bool:
        status, body = api.get("/jobs?status=scheduled&queue=low")
        return any(j["task"] == "hooks.webhook" and j["attempts"] == 1 for j in body["jobs"])

    wait_until(delivery_retried, timeout=30, what="the webhook delivery to fail once and wait for its retry")
    assert receiver.requests == []

"""Outbound: the fence around every HTTP call a task makes to a URL it was given (webhooks, http.check).

A URL from a client could aim a worker at its own network: loopback, the
cloud metadata address, a private service. `fetch()` refuses any address
that is not public (loopback, private, link-local, multicast, unspecified,
reserved, CGNAT, IPv4-mapped or translated forms of those) unless
OUTBOUND_ALLOW lists its host name or network. It checks the addresses a
name resolves to and connects to the address it checked (one lookup: no
DNS-rebinding window), while the Host header and TLS (SNI, certificate)
keep the name. Only http and https; no proxy from the environment;
redirects are followed here, a few at most, each hop fenced again.

Reach into the standard library (CPython 3.11): an http.client connection
opens its socket through its `_create_connection` attribute; fetch() sets
it per connection to the fenced one.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from service.core.config import OutboundAllow

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]

REDIRECTS = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}


def _within(*cidrs: str) -> Callable[[Address], bool]:
    networks = [ipaddress.ip_network(cidr) for cidr in cidrs]
    return lambda ip: any(ip in network for network in networks)


# Checked in order on the address (an IPv4-mapped IPv6 address as its IPv4
# form); the first match names the refusal. Explicit ranges, since CPython's
# flags miss some (100.64/10 is neither private nor global; ::127.0.0.1,
# 2002:7f00:1:: and 192.0.0.192 count as global on 3.11).
RULES: tuple[tuple[str, Callable[[Address], bool]], ...] = (
    ("unspecified", _within("0.0.0.0/8", "::/128")),
    ("loopback", _within("127.0.0.0/8", "::1/128")),
    ("link-local", _within("169.254.0.0/16", "fe80::/10")),
    ("multicast", _within("224.0.0.0/4", "ff00::/8")),
    ("private", _within("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("shared address space (CGNAT)", _within("100.64.0.0/10")),
    ("an IPv6 form of an IPv4 address (IPv4-compatible, NAT64, 6to4, Teredo)",
     _within("::/96", "64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "2001::/32")),
    ("site-local", _within("fec0::/10")),
    ("a cloud metadata address", _within("168.63.129.16/32", "192.0.0.192/32")),
    ("reserved", lambda ip: not ip.is_global or ip in ipaddress.ip_network("192.0.0.0/24")),
)  # fmt: skip

_allowed = OutboundAllow()


class OutboundRefused(Exception):
    """Raised when a URL leads somewhere the fence refuses; the message names the address and the rule."""


@dataclass(frozen=True)
class Response:
    """What a fenced call answered: the status, and the URL that gave it (after redirects)."""

    status: int
    url: str


def allow(allowed: OutboundAllow) -> None:
    """Set what OUTBOUND_ALLOW lists (service.ops.process calls it at process start)."""
    global _allowed
    _allowed = allowed


def refusal(address: Address) -> str | None:
    """The rule that refuses `address`, or None when it is public or listed in OUTBOUND_ALLOW."""
    unwrapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped else address
    if any(ip in network for network in _allowed.networks for ip in (address, unwrapped)):
        return None
    return next((rule for rule, matches in RULES if matches(unwrapped)), None)


def fetch(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_seconds: float = 5.0,
    max_redirects: int = 3,
    resolve: Resolver = socket.getaddrinfo,
) -> Response:
    """Call `url` through the fence, following up to `max_redirects` redirects; OutboundRefused if refused."""
    for hop in range(max_redirects + 1):
        status, location = _call(url, method, body, headers or {}, timeout_seconds, resolve)
        if status not in REDIRECTS or not location or hop == max_redirects:
            return Response(status, url)
        url = urljoin(url, location)
        if status == 303 or (status in (301, 302) and method not in ("GET", "HEAD")):
            method, body = "GET", None
    raise AssertionError("unreachable")  # pragma: no cover


def _call(
    url: str, method: str, body: bytes | None, headers: dict[str, str], timeout: float, resolve: Resolver
) -> tuple[int, str | None]:
    """One request to `url` on a fenced connection: its status and Location header."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise OutboundRefused(f"{url[:200]!r} is not an http:// or https:// URL with a host")
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
    connection._create_connection = _fenced_connect(resolve)  # type: ignore[attr-defined]
    try:
        connection.request(method, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        response = connection.getresponse()
        return response.status, response.getheader("Location")
    finally:
        connection.close()


def _fenced_connect(resolve: Resolver) -> Callable[..., socket.socket]:
    """A socket.create_connection that resolves once, checks every answer, and connects to a checked one."""

    def connect(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
        host, port = address
        answers = [(family, sockaddr) for family, _, _, _, sockaddr in resolve(host, port, type=socket.SOCK_STREAM)]
        if host.lower().removesuffix(".") not in _allowed.hosts:
            for _, sockaddr in answers:
                ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
                rule = refusal(ip)
                if rule is not None:
                    named = "" if host == sockaddr[0] else f" ({host[:100]})"
                    raise OutboundRefused(f"{ip}{named} is {rule}; list it in OUTBOUND_ALLOW to allow")
        error: OSError = OSError(f"{host[:100]} resolved to no address")
        for family, sockaddr in answers:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error

    return connect

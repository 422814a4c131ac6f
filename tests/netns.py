"""Network namespaces as test "hosts": made, linked by veth pairs and removed by the test itself.

Every address is a private one of the test's own (10.231.0.0/16, /30 per
link), assigned inside the namespaces only: nothing is routed to or from the
machine's own interfaces, and no traffic leaves the links the test made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

SUBNET_PREFIX = "10.231"


def ip(*args: str) -> None:
    """Run `ip` with `args`; raise RuntimeError with its message when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (None when they can): probed by making one."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"qsprobe{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces refused: {exc}"
    try:
        ip("netns", "exec", probe, "ip", "link", "set", "lo", "up")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot configure a network namespace: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None


@dataclass
class Link:
    """A veth pair between a hub namespace and a host namespace, a /30 of its own."""

    hub_device: str
    host_device: str
    hub_address: str
    host_address: str


@dataclass
class Network:
    """A hub namespace (where Redis runs) with one veth link to each host namespace."""

    tag: str
    subnet: int
    hub: str = ""
    hosts: dict[str, str] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hub = f"{self.tag}hub"
        ip("netns", "add", self.hub)
        ip("netns", "exec", self.hub, "ip", "link", "set", "lo", "up")

    def add_host(self, name: str) -> Link:
        """Make namespace `name`, linked to the hub by a veth pair on its own /30."""
        index = len(self.links)
        namespace = f"{self.tag}{name}"
        ip("netns", "add", namespace)
        self.hosts[name] = namespace
        base = 4 * index
        link = Link(
            hub_device=f"{self.tag}h{index}",
            host_device=f"{self.tag}n{index}",
            hub_address=f"{SUBNET_PREFIX}.{self.subnet}.{base + 1}",
            host_address=f"{SUBNET_PREFIX}.{self.subnet}.{base + 2}",
        )
        # Made inside the hub namespace and one end moved: nothing is ever in the machine's own namespace.
        ip(
            "netns",
            "exec",
            self.hub,
            "ip",
            "link",
            "add",
            link.hub_device,
            "type",
            "veth",
            "peer",
            "name",
            link.host_device,
        )
        ip("netns", "exec", self.hub, "ip", "link", "set", link.host_device, "netns", namespace)
        ip("netns", "exec", self.hub, "ip", "addr", "add", f"{link.hub_address}/30", "dev", link.hub_device)
        ip("netns", "exec", namespace, "ip", "addr", "add", f"{link.host_address}/30", "dev", link.host_device)
        ip("netns", "exec", self.hub, "ip", "link", "set", link.hub_device, "up")
        ip("netns", "exec", namespace, "ip", "link", "set", link.host_device, "up")
        ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        self.links[name] = link
        return link

    def cut(self, name: str) -> None:
        """Take host `name`'s link down at the hub: the host is cut off, its processes keep running."""
        ip("netns", "exec", self.hub, "ip", "link", "set", self.links[name].hub_device, "down")

    def restore(self, name: str) -> None:
        """Bring host `name`'s link up again at the hub: what it sent meanwhile may still arrive (TCP retries)."""
        ip("netns", "exec", self.hub, "ip", "link", "set", self.links[name].hub_device, "up")

    def run_in(self, name: str) -> list[str]:
        """The command prefix that runs a program inside host `name` (or "hub")."""
        return ["ip", "netns", "exec", self.hub if name == "hub" else self.hosts[name]]

    def remove(self) -> None:
        """Delete every namespace made (their veth devices go with them)."""
        for namespace in [*self.hosts.values(), self.hub]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=20)

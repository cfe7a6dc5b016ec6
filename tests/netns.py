"""A private LAN of Linux network namespaces for tests that need processes on distinct addresses:
a bridge on the host with the address ``host_ip``, and one namespace per member, each joined to the
bridge by a veth pair and given an address of its own, so a server bound to ``host_ip`` sees each
member's connections come from that member's address (as venues see collectors on different machines).

Needs root (``ip netns``); :func:`lan` skips the test, saying why, where it cannot build the LAN."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Lan:
    host_ip: str  # the bridge's address on the host: bind servers here
    namespaces: list[str]  # one per member
    ips: list[str]  # each member's address, in the same order

    def command(self, member: int, argv: list[str]) -> list[str]:
        """``argv`` run inside member ``member``'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[member], *argv]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@contextmanager
def lan(members: int) -> Iterator[Lan]:
    """A bridge and ``members`` namespaces on a /24 of their own (named after this process, so
    parallel test processes never collide); everything is removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip`); the loopback variant covers the rest")
    tag = f"df{os.getpid() % 100_000}"
    net = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    bridge = f"{tag}br"
    names = [f"{tag}n{i}" for i in range(members)]
    made: list[tuple[str, str]] = []  # what to delete: ("netns"|"link", name)
    try:
        try:
            _ip("link", "add", bridge, "type", "bridge")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create a bridge here ({exc.stderr.strip()}); the loopback variant covers the rest")
        made.append(("link", bridge))
        _ip("addr", "add", f"{net}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        ips = []
        for i, ns in enumerate(names):
            outer, inner, addr = f"{tag}v{i}", f"{tag}p{i}", f"{net}.{10 + i}"
            _ip("netns", "add", ns)
            made.append(("netns", ns))
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            made.append(("link", outer))
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", inner)
            _ip("netns", "exec", ns, "ip", "link", "set", inner, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            ips.append(addr)
        yield Lan(f"{net}.1", names, ips)
    finally:
        for kind, name in reversed(made):
            subprocess.run(["ip", kind, "del", name], capture_output=True, timeout=10)

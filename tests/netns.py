"""Hosts that share nothing but a network, for the multi-host test: Linux network namespaces.

Each host is a namespace with its own `lo` and one interface, `eth0`, with an address of a /24
picked at random in 10.0.0.0/8. The other ends of their veth pairs sit on a bridge in a "switch"
namespace of its own, so that the machine's firewall (Docker's FORWARD DROP, with br_netfilter
handing bridged frames to it) never sees their traffic; the test's own namespace is joined to the
switch by one more veth pair and has the address .254. Every name the machine sees (namespaces,
the one veth end in the test's namespace) carries a random suffix, so two runs cannot clash.

Needs root (CAP_NET_ADMIN) and iproute2's `ip`: `unavailable()` says why not where it cannot.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

SWITCH_ADDRESS = 254  # the test's own namespace, on the switch too
BRIDGE = "br0"  # inside the switch namespace: its names are its own


def ip(*args: str) -> str:
    """Run `ip ARGS`; its output, or CalledProcessError with what it said on stderr."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


def veth(netns: str, name: str, peer: str, peer_netns: str) -> None:
    """A veth pair made in `netns`, its other end `peer` straight in `peer_netns`."""
    ip("-n", netns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_netns)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (not root, no `ip`, no CAP_NET_ADMIN), else None.
    Tried for real: a throwaway namespace with a veth pair inside, removed again."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "not root: making network namespaces needs CAP_NET_ADMIN"
    probe = f"nst-probe-{secrets.token_hex(4)}"
    try:
        ip("netns", "add", probe)
        try:
            ip("-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
            ip("-n", probe, "link", "add", BRIDGE, "type", "bridge")
        finally:
            ip("netns", "delete", probe)
    except subprocess.CalledProcessError as exc:
        return f"`{' '.join(exc.cmd)}` failed: {exc.stderr.strip()}"
    return None


def pick_subnet() -> ipaddress.IPv4Network:
    """A random /24 in 10.0.0.0/8 that no route or address of this namespace touches."""
    taken = [ipaddress.ip_network(word, strict=False) for word in _routed_prefixes()]
    for _ in range(100):
        subnet = ipaddress.IPv4Network(f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.0/24")
        # Only a route as specific as ours or more would win over it; a broad 10.0.0.0/8 does not.
        if not any(subnet.overlaps(other) and other.prefixlen >= subnet.prefixlen for other in taken):
            return subnet
    raise RuntimeError("no free /24 in 10.0.0.0/8")


def _routed_prefixes() -> list[str]:
    words = []
    for line in ip("-4", "route", "show", "table", "all").splitlines() + ip("-4", "-o", "addr").splitlines():
        for word in line.split():
            if word[:1].isdigit() and "." in word:
                try:
                    ipaddress.ip_network(word, strict=False)
                except ValueError:
                    continue
                words.append(word)
    return words


@dataclass
class Host:
    """One namespace with one address: run a command there with `[*host.prefix, *command]`."""

    label: str
    netns: str
    address: str
    port_name: str  # its veth end on the switch's bridge

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns)

    def pids(self) -> list[int]:
        """Every process whose network namespace this is."""
        try:
            return [int(pid) for pid in ip("netns", "pids", self.netns).split()]
        except subprocess.CalledProcessError:  # the namespace is gone
            return []

    def kill(self) -> None:
        """SIGKILL every process of the host, until none is left (one may fork meanwhile)."""
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        raise RuntimeError(f"processes of {self.netns} keep coming back: {self.pids()}")


@dataclass
class Network:
    """A switch and the hosts on it; close() removes every namespace, link and process it made."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    subnet: ipaddress.IPv4Network = field(default_factory=pick_subnet)
    hosts: list[Host] = field(default_factory=list)
    up: bool = False

    @property
    def switch(self) -> str:
        return f"nst-{self.suffix}-switch"

    @property
    def uplink(self) -> str:
        """The test namespace's end of its veth pair to the switch (15 characters at most)."""
        return f"nst{self.suffix}"

    @property
    def address(self) -> str:
        """The test's own address on the switch."""
        return str(self.subnet.network_address + SWITCH_ADDRESS)

    def start(self) -> Network:
        """The switch, and the test's namespace on it."""
        self.up = True  # from here on close() has something to remove
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "set", "lo", "up")
        ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", self.switch, "link", "set", BRIDGE, "up")
        # Made inside the switch with its peer here: nothing is left in this namespace half-made.
        veth(self.switch, "uplink", self.uplink, str(os.getpid()))  # a PID names its namespace
        ip("-n", self.switch, "link", "set", "uplink", "master", BRIDGE, "up")
        ip("addr", "add", f"{self.address}/{self.subnet.prefixlen}", "dev", self.uplink)
        ip("link", "set", self.uplink, "up")
        return self

    def add_host(self, label: str) -> Host:
        """A new namespace on the switch, with the next address (.1, .2, ...)."""
        number = len(self.hosts) + 1
        host = Host(label, f"nst-{self.suffix}-{label}", str(self.subnet.network_address + number), f"h{number}")
        self.hosts.append(host)
        ip("netns", "add", host.netns)
        ip("-n", host.netns, "link", "set", "lo", "up")
        veth(self.switch, host.port_name, "eth0", host.netns)
        ip("-n", self.switch, "link", "set", host.port_name, "master", BRIDGE, "up")
        ip("-n", host.netns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        return host

    def remove(self, host: Host) -> None:
        """The host is gone: its processes killed, its namespace (and so its veth pair) deleted."""
        host.kill()
        with contextlib.suppress(subprocess.CalledProcessError):  # never made, or removed already
            ip("netns", "delete", host.netns)

    def close(self) -> None:
        """Remove everything start() and add_host() made, what failed half-way included."""
        if not self.up:
            return
        errors = []
        for host in reversed(self.hosts):
            try:
                self.remove(host)
            except Exception as exc:  # go on: the rest must go too
                errors.append(exc)
        for args in (("link", "delete", self.uplink), ("netns", "delete", self.switch)):
            # The uplink goes with the switch; either may never have been made.
            with contextlib.suppress(subprocess.CalledProcessError):
                ip(*args)
        self.up = False
        if errors:
            raise errors[0]

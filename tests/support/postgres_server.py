"""A PostgreSQL server of the test's own (Debian's initdb and pg_ctl, run as the
``postgres`` user, since initdb refuses root), listening on an address the test chooses,
in a temporary data directory; so a test can restart it (``pg_ctl restart``) without
touching the machine's server, and namespaced hosts can reach it.

Durability is off (fsync, synchronous commit, full-page writes): a fast restart still
keeps every committed row, which is all a restart test needs. A server a crashed run
left running is stopped by the next one (its data directory names the creating process).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

import psycopg

from tests.support.databases import _pid_alive

_DATA_PREFIX = "trk-pg-"
OWNER = "postgres"


def binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl, or None."""
    found = sorted(
        (Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    usable = [path for path in found if (path / "pg_ctl").exists()]
    return usable[-1] if usable else None


def missing() -> str | None:
    """Why a server of the test's own cannot be started here, or None."""
    if binaries() is None:
        return "PostgreSQL's server binaries are not installed (/usr/lib/postgresql/<version>/bin)"
    if shutil.which("runuser") is None:
        return "runuser (util-linux) is not installed"
    try:
        import pwd

        pwd.getpwnam(OWNER)
    except KeyError:
        return f"there is no {OWNER!r} user to run initdb as"
    return None


def _as_owner(*command: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["runuser", "-u", OWNER, "--", *command], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def stop_leftovers() -> None:
    """Stops (immediate) the servers of runs whose process is gone, and removes their data."""
    bindir = binaries()
    for directory in Path(tempfile.gettempdir()).glob(f"{_DATA_PREFIX}*"):
        parts = directory.name[len(_DATA_PREFIX):].split("-")
        if not parts or not parts[0].isdigit() or _pid_alive(int(parts[0])):
            continue
        if bindir is not None:
            _stop_immediately(bindir, directory / "data")
        shutil.rmtree(directory, ignore_errors=True)


def _stop_immediately(bindir: Path, data: Path) -> None:
    if (data / "postmaster.pid").exists():
        subprocess.run(
            ["runuser", "-u", OWNER, "--", str(bindir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"],
            capture_output=True, timeout=60, check=False,
        )


class PostgresServer:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        bindir = binaries()
        if bindir is None:
            raise RuntimeError(missing() or "no PostgreSQL binaries")
        self.bindir = bindir
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{_DATA_PREFIX}{os.getpid()}-"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{OWNER}@{self.host}:{self.port}/{database}"

    def __enter__(self) -> Self:
        stop_leftovers()
        shutil.chown(self.workdir, OWNER, OWNER)
        os.chmod(self.workdir, 0o700)
        try:
            _as_owner(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", OWNER, "-A", "trust",
                "-E", "UTF8", "--no-sync", "--locale", "C",
            )
            settings = {
                "listen_addresses": f"'{self.host}'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.workdir}'",
                "max_connections": "300",
                "shared_buffers": "128MB",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "log_min_messages": "warning",
            }
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
            (self.data / "pg_hba.conf").write_text(
                "local all all trust\nhost all all 0.0.0.0/0 trust\n", encoding="utf-8"
            )
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def _pg_ctl(self, *arguments: str) -> None:
        _as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", *arguments)

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """A fast shutdown (every session ended, the checkpoint written), then a start:
        what an operator's ``systemctl restart postgresql`` does."""
        self._pg_ctl("restart", "-m", "fast")

    def postmaster_pid(self) -> int:
        """The running server's main process (it changes with a restart)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        _stop_immediately(self.bindir, self.data)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(self, *_exc: object) -> None:
        self.close()

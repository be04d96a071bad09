"""A set of tracker processes (workers, beats, Flower) that a test starts one by one and
that are all stopped when the block ends, whatever happened: no orphans.

Each process is registered before the test waits for it to become ready, so one that
never gets ready is stopped too.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

from tests.support import processes
from tests.support.processes import Proc
from tests.support.skewed_clock import skewed, skewed_env


class Cluster(ExitStack):
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__()
        self.env = env
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def stop_all(self) -> None:
        """Stops every process started so far, the latest first, as the block's end does."""
        self.close()

    def _start(
        self, name: str, command: list[str], env: dict[str, str] | None = None, clock_offset: float = 0.0
    ) -> Proc:
        """``clock_offset``: seconds the process's wall clock is off (faketime), as on a
        host whose clock is wrong."""
        environment = env or self.env
        if clock_offset:
            command, environment = skewed(command, clock_offset), skewed_env(environment)
        # faketime runs the command as its child and does not pass a SIGTERM on: in a
        # process group of its own, which stop() ends whole, the child cannot outlive it.
        proc = processes.start(name, command, environment, self.log_dir, group=bool(clock_offset))
        self.procs.append(proc)
        self.callback(proc.stop)
        return proc

    def workers(
        self, *names: str, concurrency: int = 4, queues: str | None = None, clock_offset: float = 0.0
    ) -> list[Proc]:
        """Start workers together, then wait until each is ready. ``queues``: the queues
        they consume (``-Q``; default every queue)."""
        started = [
            self._start(
                name,
                processes.celery(
                    "worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
                    "--hostname", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
                    *(("--queues", queues) if queues else ()),
                ),
                clock_offset=clock_offset,
            )
            for name in names
        ]
        for proc in started:
            proc.wait_for_output(" ready.", timeout=60)
        return started

    def plain_worker(self, name: str = "worker", *, cpus: str | None = None) -> Proc:
        """``celery -A tracker worker`` as a stranger starts it (no pool flags), on the CPUs
        ``cpus`` (``taskset -c``) when given, as a small VPS has them."""
        pinned = ["taskset", "-c", cpus] if cpus is not None else []
        proc = self._start(name, [*pinned, *processes.celery("worker", "--loglevel", "INFO")])
        proc.wait_for_output(" ready.", timeout=60)
        return proc

    def worker(
        self, name: str = "worker", concurrency: int = 4, *, queues: str | None = None, clock_offset: float = 0.0
    ) -> Proc:
        return self.workers(name, concurrency=concurrency, queues=queues, clock_offset=clock_offset)[0]

    def beat(self, name: str = "beat", *, clock_offset: float = 0.0) -> Proc:
        proc = self._start(
            name,
            processes.celery("beat", "--loglevel", "INFO", "--schedule", str(self.log_dir / f"{name}-schedule")),
            clock_offset=clock_offset,
        )
        proc.wait_for_output("beat: Starting", timeout=60)
        return proc

    def tracker_command(self, name: str, *arguments: str, env: dict[str, str] | None = None) -> Proc:
        """A long-running ``tracker`` subcommand (``flower``, ``sim``), not waited for."""
        return self._start(name, [sys.executable, "-m", "tracker.cli.main", *arguments], env)

    def output(self) -> dict[str, str]:
        return {proc.name: proc.output() for proc in self.procs}

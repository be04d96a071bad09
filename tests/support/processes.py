"""Real tracker processes for integration tests: Celery worker, beat, Flower, the sim.

Each writes its output to a log file in the test's temporary directory, so a failing
test can show it and the secrets test can scan it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tracker.ops.children import die_with_parent


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_handle: object = field(repr=False, default=None)
    # Started as the leader of a process group of its own: stop() signals the whole group,
    # for servers that fork workers which outlive their parent (php -S).
    group: bool = False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not print {text!r} in {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        if self.group:
            # Workers still there after their parent: end them, and wait until they are gone.
            deadline = time.monotonic() + timeout
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
                while time.monotonic() < deadline:
                    os.killpg(self.process.pid, 0)
                    time.sleep(0.05)
            except ProcessLookupError:
                pass
        handle = self._log_handle
        if handle is not None:
            handle.close()  # type: ignore[attr-defined]

    def _signal(self, number: int) -> None:
        if self.group:
            os.killpg(self.process.pid, number)
        else:
            self.process.send_signal(number)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def start(
    name: str, command: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None, *,
    group: bool = False, die_with_test: bool = False,
) -> Proc:
    """Run ``command`` in ``cwd`` (the log directory unless told otherwise); ``group``: in a
    process group of its own, which ``Proc.stop`` ends whole; ``die_with_test``: it gets
    SIGTERM when the test process dies, even by SIGKILL (only for processes started from
    the test's main thread)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed in Proc.stop
    process = subprocess.Popen(
        command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd or log_dir, start_new_session=group,
        preexec_fn=die_with_parent if die_with_test else None,
    )
    return Proc(name, process, log_path, handle, group)


def celery(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tracker", *arguments]


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker", concurrency: int = 4) -> Proc:
    proc = start(
        name,
        celery(
            "worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
            "--hostname", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
        ),
        env,
        log_dir,
    )
    proc.wait_for_output(" ready.", timeout=60)
    return proc


def start_beat(env: dict[str, str], log_dir: Path, name: str = "beat") -> Proc:
    proc = start(
        name,
        celery("beat", "--loglevel", "INFO", "--schedule", str(log_dir / f"{name}-schedule")),
        env,
        log_dir,
    )
    proc.wait_for_output("beat: Starting", timeout=60)
    return proc


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.25, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)

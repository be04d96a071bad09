"""`tracker run`'s workers, forked from the interpreter that has imported what they run.

Started as ``python -m celery …``, each worker, and beat and Flower beside it, imported
Python's standard library, Celery, kombu, SQLAlchemy, requests and the tracker on its
own: about 80 MB apiece, most of it the same bytes over and over. Forked from the runner
once it has imported them (beat and Flower then run in the runner itself, see
tracker.ops.hosted), the workers share those pages copy-on-write, and so do their pool
children forked in turn. ``gc.freeze()`` before the forks keeps the garbage collector
from writing to (and so copying) the shared objects. Measured in docs/performance.md,
"Footprint".

Only `tracker run` forks: production runs the plain ``celery -A tracker worker`` / ``beat``
commands of the Procfile, one per container or unit, and ``tracker demo`` keeps separate
processes with a log file each.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from celery import Celery
from celery.app.utils import find_app
from sqlalchemy.orm import configure_mappers

from tracker.ops.children import die_with_parent

# What the workers run, beyond the tracker app and its task modules: what a worker's
# main process imports as it builds its consumer and pool, which its pool children and
# (for beat and Flower) the runner would otherwise each import again after the fork. Not
# Celery's command line (celery.bin): it loads `celery shell`'s prompt toolkit and its
# tables, some MB that no child needs, so the workers start through app.Worker. Not
# Flower either: only the runner uses it, so it is imported there after the forks.
PRELOADED_MODULES = (
    "celery.apps.worker",
    "celery.worker.consumer",
    "celery.worker.components",
    "celery.worker.autoscale",
    "celery.concurrency.prefork",
    "celery.app.amqp",
    "celery.app.control",
    "celery.app.events",
    "celery.app.log",
    "celery.app.routes",
    "celery.backends.base",
    "celery.events.dispatcher",
    "celery.events.receiver",
    "celery.events.state",
    "kombu.transport.redis",
    "kombu.mixins",
    "kombu.pidbox",
    "billiard.popen_fork",
    "billiard.sharedctypes",
    "billiard.synchronize",
    "sqlite3",
)
PR_SET_NAME = 15


def preload() -> Celery:
    """Import everything the children will run, then freeze it for the collector.

    Call it once the environment the children need is in place (the tracker app reads its
    settings when imported), and before any thread starts: a fork copies only the thread
    that forks."""
    from tracker.config import reset_settings

    reset_settings()
    app = tracker_app()
    app.loader.import_default_modules()
    for module in PRELOADED_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # moved in another Celery release: only less is shared
            pass
    # SQLAlchemy builds its mappers' internals on the first query: here, once, shared,
    # rather than in every pool child.
    configure_mappers()
    gc.collect()
    gc.freeze()
    return app


def run_worker(node: str, loglevel: str, heartbeat_interval: float) -> int:
    """What ``celery -A tracker worker --hostname NODE --loglevel … --heartbeat-interval …``
    does, without loading Celery's command line: the banner, logging, signals, the pool."""
    from celery.utils.nodenames import default_nodename, host_format

    # Without gossip and mingle: they keep other workers' clocks and revoked-task lists
    # in step, which the tracker does not use, and on one host they cost every worker an
    # event consumer (and mingle a second's wait at start).
    worker = tracker_app().Worker(
        hostname=host_format(default_nodename(node)), loglevel=loglevel, heartbeat_interval=heartbeat_interval,
        without_gossip=True, without_mingle=True,
    )
    worker.start()
    return int(worker.exitcode or 0)


def tracker_app() -> Celery:
    """The app as ``celery -A tracker`` finds it (ops sits beside the worker package, not
    above it, so it asks Celery rather than importing it)."""
    app: Celery = find_app("tracker")
    return app


class ForkedChild:
    """A forked process that runs ``target`` and exits with its result, with the part of
    ``subprocess.Popen`` the runner uses."""

    def __init__(self, name: str, target: Callable[[], int]) -> None:
        self.args = [f"tracker-{name}"]
        self.returncode: int | None = None
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            _run_forked(name, target)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.05)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _run_forked(name: str, target: Callable[[], int]) -> NoReturn:
    """In the child: run ``target`` and never return into the runner. The environment is
    the runner's, as it was at the fork."""
    code = 1
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        die_with_parent()
        _name_process(f"tracker-{name}")
        code = target()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed pipe: nothing left to say it on
                pass
        os._exit(code)


def _name_process(name: str) -> None:
    """What `ps -e`, `top` and /proc/<pid>/comm show (all children share the runner's
    command line): tracker-worker, tracker-worker2, …"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass

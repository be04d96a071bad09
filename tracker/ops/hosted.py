"""Beat and Flower run inside `tracker run`'s own process.

Each would otherwise be a process of its own that mostly sleeps, and even forked from
the runner (tracker.ops.forked) each one dirties 15–20 MB of pages it shares. Here beat
is a thread and Flower owns the main thread's event loop, which also watches the forked
workers. Measured in docs/performance.md, "Footprint".

Deployments run ``celery -A tracker beat`` and ``tracker flower`` (the Procfile) as
processes of their own, as Celery and Flower document; this is for one small host.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from celery import Celery
from celery.beat import Service

log = logging.getLogger(__name__)

# A signal (a stop request, a child's exit) wakes Flower's event loop at once; beyond
# that it looks at the workers and beat this often, for what sends no signal.
WATCH_INTERVAL_SECONDS = 5.0
WAKING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)
# Flower keeps every task it has seen in memory, 100,000 by default: about 5 KB each, so
# 50 MB once an idle tracker has ticked for ten hours, on a host where the whole of
# `tracker run` holds 155 MB. The tracker's own history is in its database.
HOSTED_MAX_TASKS = 1000


class BeatThread:
    """Celery beat's service on a daemon thread, stopped (its schedule saved) by ``stop``."""

    def __init__(self, app: Celery, schedule: Path) -> None:
        self._service = Service(app, schedule_filename=str(schedule), scheduler_cls=app.conf.beat_scheduler)
        self._thread = threading.Thread(target=self._run, name="tracker-beat", daemon=True)

    def _run(self) -> None:
        try:
            self._service.start()
        except BaseException:  # alive() then says no, and the runner stops everything
            log.exception("beat stopped")

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        self._service.stop()
        self._thread.join(timeout)


class HostedFlower:
    """Flower, listening on ``address:port`` once made (OSError when it cannot). Options
    come from the FLOWER_* environment and a flowerconfig.py, as for ``celery flower``,
    except that it keeps the last HOSTED_MAX_TASKS tasks unless FLOWER_MAX_TASKS is set."""

    def __init__(self, app: Celery, *, address: str, port: int) -> None:
        from flower.app import Flower
        from flower.command import apply_env_options, apply_options, extract_settings, setup_logging
        from flower.urls import settings
        from tornado.options import options

        apply_env_options()
        apply_options("flower", [f"--address={address}", f"--port={port}"])
        extract_settings()
        setup_logging()
        # The workers send task events by their own configuration (tracker.worker.app), so
        # Flower need not broadcast "enable events" to them every 5 s.
        options.enable_events = False
        if "FLOWER_MAX_TASKS" not in os.environ:
            options.max_tasks = min(options.max_tasks, HOSTED_MAX_TASKS)
        self._flower = Flower(capp=app, options=options, **settings)
        self._flower.start_http_server()

    def serve(self, keep_running: Callable[[], bool]) -> None:
        """Until ``keep_running`` says stop: asked when one of WAKING_SIGNALS arrives (after
        the handler installed for it has run) and every WATCH_INTERVAL_SECONDS. An idle
        loop that woke every half second to ask cost more CPU than Flower itself."""
        from tornado.ioloop import PeriodicCallback

        flower = self._flower

        def watch() -> None:
            if not keep_running():
                flower.stop()

        loop = flower.io_loop.asyncio_loop
        installed = {signum: signal.getsignal(signum) for signum in WAKING_SIGNALS}
        for signum, handler in installed.items():
            loop.add_signal_handler(signum, _then, handler, signum, watch)
        watcher = PeriodicCallback(watch, WATCH_INTERVAL_SECONDS * 1000)
        watcher.start()
        try:
            flower.start()
        finally:
            watcher.stop()
            for signum, handler in installed.items():
                loop.remove_signal_handler(signum)
                # Back to what the runner installed: a second Ctrl-C while it stops the
                # workers must not interrupt that.
                signal.signal(signum, handler)
            flower.stop()
            # Flower's event thread cannot be joined and retries its connection until the
            # process exits: its "connection refused" once Redis has stopped is no news.
            logging.getLogger("flower.events").setLevel(logging.CRITICAL)


def _then(handler: object, signum: int, watch: Callable[[], None]) -> None:
    """asyncio's signal handler: the one the runner had installed, then ``watch``."""
    if callable(handler):
        handler(signum, None)
    watch()

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
import threading
from collections.abc import Callable
from pathlib import Path

from celery import Celery
from celery.beat import Service

log = logging.getLogger(__name__)

# How often Flower's event loop looks at the workers and at a stop request.
WATCH_INTERVAL_SECONDS = 0.5


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
    come from the FLOWER_* environment and a flowerconfig.py, as for ``celery flower``."""

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
        self._flower = Flower(capp=app, options=options, **settings)
        self._flower.start_http_server()

    def serve(self, keep_running: Callable[[], bool]) -> None:
        """Until ``keep_running`` says stop (asked every half second)."""
        from tornado.ioloop import PeriodicCallback

        flower = self._flower

        def watch() -> None:
            if not keep_running():
                flower.stop()

        watcher = PeriodicCallback(watch, WATCH_INTERVAL_SECONDS * 1000)
        watcher.start()
        try:
            flower.start()
        finally:
            watcher.stop()
            flower.stop()
            # Flower's event thread cannot be joined and retries its connection until the
            # process exits: its "connection refused" once Redis has stopped is no news.
            logging.getLogger("flower.events").setLevel(logging.CRITICAL)

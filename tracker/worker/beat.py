"""Beat's scheduler: Celery's file-backed one, which first makes the schedule file's
folder, and sleeps until a run is due.

Plain ``celery -A tracker beat`` (systemd, Kubernetes, a Procfile) keeps its schedule in
the state directory, which nothing may have created yet in a fresh working directory.
The folder is made here, when beat opens the file, rather than on import: importing the
app (a shop's client, ``tracker --help``) writes nothing. ``beat_init`` would come too
late: Celery opens the schedule before it sends that signal.
"""

from __future__ import annotations

from pathlib import Path

from celery.beat import PersistentScheduler


class StateDirScheduler(PersistentScheduler):  # type: ignore[misc]  # Celery is untyped
    def adjust(self, n: float | None, drift: float = 0.0) -> float | None:
        """Celery wakes beat 10 ms (its default drift) before a run is due, finds it not
        due yet, and calls tick() again without sleeping until it is: a busy loop of
        about 10 ms of CPU for every run, most of what an idle tracker spends on a small
        host. Without the drift beat sleeps until the run is due; a run is at most a
        clock tick late, which no schedule of ours notices."""
        return n

    def setup_schedule(self) -> None:
        filename = getattr(self, "schedule_filename", None)
        if filename:
            Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().setup_schedule()

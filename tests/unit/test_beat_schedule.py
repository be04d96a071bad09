"""What beat sends, and how often: an idle tracker on a small host pays for every run."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.beat import Service

from tracker.config import Settings
from tracker.worker.app import beat_schedule
from tracker.worker.beat import StateDirScheduler


def intervals(env: dict[str, str]) -> dict[str, float]:
    return {name: float(entry["schedule"]) for name, entry in beat_schedule(Settings.from_env(env)).items()}


def test_an_idle_tracker_runs_its_dispatcher_every_tick_and_nothing_else_more_than_once_a_minute() -> None:
    # Key probes have no entry: the dispatcher sends the probe task when one is due, which
    # saves an idle host four tasks a minute that found nothing to do.
    every = intervals({})
    assert every["dispatch-polls"] == 5.0
    assert "probe-keys" not in every
    assert {name: seconds for name, seconds in every.items() if seconds < 60} == {"dispatch-polls": 5.0}


def test_beat_sleeps_until_a_run_is_due_instead_of_spinning(tmp_path: Path) -> None:
    """Celery's scheduler wakes 10 ms before a run is due and then calls tick() in a busy
    loop until it is: about 10 ms of CPU per run, most of an idle small host's beat."""
    app = Celery("beat-ticks", broker="memory://", set_as_current=False)
    app.conf.beat_schedule = {"often": {"task": "noop", "schedule": 0.25}}
    service = Service(app, schedule_filename=str(tmp_path / "schedule"), scheduler_cls=StateDirScheduler)
    ticks = 0
    sent = 0
    tick = service.scheduler.tick
    apply_entry = service.scheduler.apply_entry

    def counted_tick(*args: Any, **kwargs: Any) -> Any:
        nonlocal ticks
        ticks += 1
        return tick(*args, **kwargs)

    def counted_apply_entry(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return apply_entry(*args, **kwargs)

    service.scheduler.tick = counted_tick
    service.scheduler.apply_entry = counted_apply_entry
    runner = threading.Thread(target=service.start)
    runner.start()
    time.sleep(2.0)
    service.stop(wait=True)
    runner.join(timeout=5)
    assert sent >= 5
    # One tick that sends, one that finds the next run not due yet (and sleeps until it
    # is), and now and then one more where the clock's resolution rounds a sleep short.
    assert ticks <= 3 * sent + 2, (ticks, sent)

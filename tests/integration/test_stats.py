"""`tracker stats` as monitoring runs it: a real process, after real workers did the
polling. Counts come from the database, calls from the workers' counters in Redis, and
the exit code says whether every provider is healthy."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import add_provider, count_orders, running_tracker, shop_client
from tests.support.databases import SERVER_DATABASES
from tests.support.processes import wait_until
from tracker.core.clock import utcnow
from tracker.config import get_settings
from tracker.db.models import Order, Provider
from tracker.db.session import dispose_engines, unit_of_work
from tracker.metrics import CallMetrics
from tracker.ops.bundled_redis import free_port
from tracker.apiv2.client import CallRecord
from tracker.sim.server import SimServer
from tracker.providers.gateway import Gateway, ProviderAccess

pytestmark = pytest.mark.integration

ORDERS = 120
STALLED_FOR = timedelta(minutes=5)


def tracker(env: dict[str, str], *arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracker.cli.main", *arguments],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
    )


def stats(env: dict[str, str], cwd: Path | None = None) -> tuple[dict[str, dict[str, Any]], int]:
    completed = tracker(env, "stats", "--json", cwd=cwd)
    assert completed.returncode in (0, 1), completed.stderr
    assert TEST_API_KEY not in completed.stdout + completed.stderr
    return {view["provider"]: view for view in json.loads(completed.stdout)}, completed.returncode


def final_counts(provider: str) -> dict[str, int]:
    with unit_of_work() as session:
        rows = session.execute(
            select(Order.status, func.count())
            .join(Provider)
            .where(Provider.name == provider, Order.final.is_(True))
            .group_by(Order.status)
        ).all()
    return {str(status): int(number) for status, number in rows}


def is_paused(provider: str) -> bool:
    with unit_of_work() as session:
        return bool(session.scalar(select(Provider.paused).where(Provider.name == provider)))


# Monitoring matters most in production: PostgreSQL and MariaDB (the queries are plain SQL, and the
# SQLite runs of the other integration tests cover that backend).
@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def test_stats_counts_calls_health_and_exit_code(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SimServer(dialect="standard", speed=20.0, seed=21) as sim, SimServer(
        dialect="standard", api_key="the-only-key-this-panel-takes"
    ) as locked:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=ORDERS, service=1, pending_s=5, progress_s=30)
        shop = shop_client(broker_url)
        with running_tracker(tracker_env, tmp_path / "logs"):
            shop.send_task("tracker.track_orders", args=["panel", ids])
            wait_until(lambda: count_orders("panel", final=True) == ORDERS, timeout=60, what="all orders final")

            # Everything final and polled: healthy, exit 0, and the calls are the sim's.
            views, code = stats(tracker_env)
            panel = views["panel"]
            assert code == 0, views
            assert (panel["healthy"], panel["state"], panel["problems"]) == (True, "closed", [])
            assert panel["active"] == {}
            assert panel["final"] == final_counts("panel") and sum(panel["final"].values()) == ORDERS
            served = sim.stats()["all"]
            assert (panel["calls_last_hour"], panel["errors_last_hour"]) == (served["calls"], 0)
            assert panel["ids_last_hour"] == served["ids_total"]
            assert panel["poll_lag_seconds"] == 0

            # A panel that refuses our key pauses its provider at the first answer.
            add_provider("locked", locked.url, monkeypatch)
            shop.send_task("tracker.track_orders", args=["locked", [11, 12, 13]])
            wait_until(lambda: is_paused("locked"), timeout=30, what="the provider paused")

        views, code = stats(tracker_env)
        assert code == 1
        assert views["panel"]["healthy"] is True
        refused = views["locked"]
        assert (refused["healthy"], refused["state"]) == (False, "paused")
        assert refused["problems"] and refused["problems"][0].startswith("paused")
        assert refused["active"] == {"not polled yet": 3}
        assert refused["calls_last_hour"] == refused["errors_last_hour"] == locked.stats()["all"]["calls"] >= 1

        text = tracker(tracker_env, "stats")
        assert text.returncode == 1
        assert re.search(r"^locked\s+UNHEALTHY\s+paused", text.stdout, re.MULTILINE), text.stdout
        assert re.search(r"^panel\s+ok\s+closed\s+0\s+120\s", text.stdout, re.MULTILINE), text.stdout
        assert "problem: paused" in text.stdout

        # The broker is down: the stats still print, with the call counters null.
        unreachable = {**tracker_env, "TRACKER_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
        offline, code = stats(unreachable)
        assert code == 1
        for name, view in offline.items():
            assert (view["calls_last_hour"], view["errors_last_hour"], view["ids_last_hour"]) == (None, None, None)
            assert view["final"] == views[name]["final"] and view["state"] == views[name]["state"]
        text = tracker(unreachable, "stats")
        assert "the broker is unreachable" in text.stderr
        assert re.search(r"^panel\s+ok\s+closed\s+0\s+120\s+0s\s+n/a\s+n/a", text.stdout, re.MULTILINE), text.stdout

        # A new key resumes the provider, but no worker runs: once its orders have waited
        # past max(60 s, 2 poll intervals) it is unhealthy for lag. Five minutes are
        # written into the database rather than waited for.
        monkeypatch.setenv("LOCKED_KEY", "the-only-key-this-panel-takes")
        add_provider("locked", locked.url, monkeypatch, "--key-env", "LOCKED_KEY")
        assert not is_paused("locked")
        with unit_of_work() as session:
            provider_id = session.scalar(select(Provider.id).where(Provider.name == "locked"))
            session.execute(
                update(Order).where(Order.provider_id == provider_id).values(next_poll_at=utcnow() - STALLED_FOR)
            )
        views, code = stats(tracker_env)
        lagging = views["locked"]
        assert code == 1
        assert (lagging["healthy"], lagging["state"]) == (False, "closed")
        assert STALLED_FOR.total_seconds() <= lagging["poll_lag_seconds"] < STALLED_FOR.total_seconds() + 60
        assert any(problem.startswith("poll lag") for problem in lagging["problems"]), lagging


def test_tracker_run_tells_other_commands_where_its_bundled_broker_is(tmp_path: Path) -> None:
    """Local mode, nothing configured: `tracker stats` in the same directory reads the
    workers' counters from the bundled Redis that `tracker run` started on a random port."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    env["PANEL_KEY"] = TEST_API_KEY
    published = tmp_path / ".tracker" / "broker-url"
    log = (tmp_path / "run.log").open("wb")
    run = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli.main", "run", "--flower-port", str(free_port())],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(published.exists, timeout=60, what="the broker-url file")
        url = published.read_text().strip()
        assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", url)
        assert published.stat().st_mode & 0o077 == 0
        added = tracker(env, "provider", "add", "panel", "--url", "http://127.0.0.1:9/api/v2", "--key-env", "PANEL_KEY", cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        with unit_of_work(f"sqlite:///{tmp_path / 'tracker.db'}") as session:
            provider_id = session.scalar(select(Provider.id).where(Provider.name == "panel"))
        assert provider_id is not None
        # As a worker would after one status call of 7 IDs.
        CallMetrics.from_url(url).record(provider_id, CallRecord("status", 7, 0.01))
        views, code = stats(env, cwd=tmp_path)
        assert code == 0
        assert (views["panel"]["calls_last_hour"], views["panel"]["ids_last_hour"]) == (1, 7)

        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 0
        assert not published.exists(), "the file must go with the broker"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        log.close()
        dispose_engines()


def test_answers_salvaged_from_php_diagnostics_are_a_warning_counted_by_severity(
    tracker_env: dict[str, str], broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real workers' path: the Gateway's client counts each call in Redis, and `tracker
    stats` shows the answers salvaged from PHP diagnostics as a warning, not a failure,
    counted by the worst severity around their JSON."""
    with SimServer(dialect="standard", api_key=TEST_API_KEY) as sim:
        add_provider("debugmode", sim.url, monkeypatch)
        ids = sim.seed_orders(count=3, service=1, pending_s=5, progress_s=30)
        settings = get_settings()
        with unit_of_work() as session:
            provider = session.scalars(select(Provider).where(Provider.name == "debugmode")).one()
            access = ProviderAccess.of(provider, settings)
        gateway = Gateway(settings, None, CallMetrics.from_url(broker_url))
        try:
            client = gateway.client(access)
            sim.inject_fault("php_notice", actions=["status"], count=1)
            sim.inject_fault("codeigniter_notice", actions=["status"], count=1)
            sim.inject_fault("php_warning", actions=["status"], count=1)
            sim.inject_fault("codeigniter_warning", actions=["status"], count=1)
            sim.inject_fault("laravel_deprecation", actions=["status"], count=1)
            for _ in range(5):
                assert set(client.status_multi(ids)) == set(ids)  # salvaged
            assert set(client.status_multi(ids)) == set(ids)  # clean
        finally:
            gateway.close()
    views, code = stats(tracker_env)
    view = views["debugmode"]
    assert code == 0 and view["healthy"] is True and view["problems"] == []
    assert (view["calls_last_hour"], view["errors_last_hour"]) == (6, 0)
    assert view["salvaged_last_hour"] == 5
    assert view["salvaged_last_hour_by_severity"] == {"deprecated": 1, "notice": 2, "warning": 2}
    assert view["warnings"] == [
        "5 answers salvaged from PHP diagnostics around their JSON in the last hour"
        " (worst: warning 2, notice 2, deprecated 1)"
    ]
    text = tracker(tracker_env, "stats")
    assert text.returncode == 0
    assert "warning: 5 answers salvaged from PHP diagnostics around their JSON" in text.stdout

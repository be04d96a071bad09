"""A real Prometheus server (Debian's `prometheus` package) scraping `tracker exporter`
during a real run, with the repository's alert rules loaded; and promtool checking and
unit-testing those rules. Skipped where the binaries are not installed (CI installs
them: .ci/run)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.helpers import add_provider, count_orders, running_tracker, shop_client
from tests.integration.test_exporter import database_orders, provider_row, running_exporter
from tests.support import processes
from tests.support.network import answers
from tests.support.processes import wait_until
from tracker.ops.bundled_redis import free_port
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus"
ORDERS = 40


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"`{binary}` is not installed (Debian: apt-get install prometheus; CI installs it)")
    return path


def test_the_alert_rules_are_valid_and_their_tests_pass() -> None:
    promtool = need("promtool")
    for arguments in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"], ["check", "config", "prometheus.yml"]):
        result = subprocess.run([promtool, *arguments], cwd=RULES, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def query(base: str, expression: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{base}/api/v1/query", params={"query": expression}, timeout=10).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_prometheus_scrapes_the_exporter_and_evaluates_the_alert_rules(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prometheus = need("prometheus")
    with SimServer(dialect="standard", speed=20.0, seed=44) as sim, SimServer(
        dialect="standard", api_key="the-only-key-this-panel-takes"
    ) as locked:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        add_provider("locked", locked.url, monkeypatch)
        ids = sim.seed_orders(count=ORDERS, service=1, pending_s=2, progress_s=8)
        shop = shop_client(broker_url)
        logs = tmp_path / "logs"
        with running_tracker(tracker_env, logs), running_exporter(tracker_env, logs) as exporter_url:
            target = exporter_url.removeprefix("http://").removesuffix("/metrics")
            port = free_port()
            config = tmp_path / "prometheus.yml"
            shutil.copy(RULES / "alerts.yml", tmp_path / "alerts.yml")
            config.write_text(
                "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                "rule_files: [alerts.yml]\n"
                "scrape_configs:\n"
                f"  - job_name: tracker\n    static_configs: [{{targets: ['{target}']}}]\n"
            )
            server = processes.start(
                "prometheus",
                [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                tracker_env, logs,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                wait_until(lambda: answers(f"{base}/-/ready") or not server.alive(), timeout=60, what="Prometheus ready")
                assert server.alive(), server.output()[-3000:]
                shop.send_task("tracker.track_orders", args=["panel", ids], kwargs={"service": 1})
                shop.send_task("tracker.track_orders", args=["locked", [7, 8]])
                wait_until(lambda: count_orders("panel", final=True) == ORDERS, timeout=60, what="all orders final")
                wait_until(lambda: provider_row("locked").paused, timeout=30, what="the provider paused")
                truth = database_orders()

                def prometheus_has_the_database_counts() -> bool:
                    rows = query(base, "tracker_orders")
                    seen = {(row["metric"]["provider"], row["metric"]["status"]): float(row["value"][1]) for row in rows}
                    return seen == truth

                wait_until(prometheus_has_the_database_counts, timeout=30, interval=1, what="Prometheus' tracker_orders")
                rows = query(base, 'up{job="tracker"}')
                assert [row["value"][1] for row in rows] == ["1"]
                paused = query(base, "tracker_provider_circuit_state == 3")
                assert [row["metric"]["provider"] for row in paused] == ["locked"]

                # Every rule loads and evaluates; the paused provider's alert is on its way.
                rules = requests.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
                assert {rule["health"] for group in rules for rule in group["rules"]} == {"ok"}, rules

                def paused_alert() -> list[dict[str, Any]]:
                    alerts = requests.get(f"{base}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
                    return [alert for alert in alerts if alert["labels"]["alertname"] == "TrackerProviderPaused"]

                wait_until(lambda: bool(paused_alert()), timeout=30, interval=1, what="the paused-provider alert")
                assert [alert["labels"]["provider"] for alert in paused_alert()] == ["locked"]

                # The Grafana dashboard's queries are valid PromQL, and the tracker's have data.
                dashboard = json.loads((REPO / "deploy" / "grafana" / "tracker-dashboard.json").read_text())
                for panel in dashboard["panels"]:
                    for target in panel.get("targets", []):
                        result = query(base, target["expr"].replace("$provider", ".*"))
                        # No balance or refills in this run: those panels may be empty.
                        if any(name in target["expr"] for name in ("tracker_orders", "tracker_poll_lag", "circuit_state")):
                            assert result, (panel["title"], target["expr"])
            finally:
                server.stop()

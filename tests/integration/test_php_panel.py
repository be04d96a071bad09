"""A real PHP interpreter: the project's own small panel (tests/php_panel/) under `php -n
-S`, PHP's built-in defaults. Like a CodeIgniter 3 panel in development mode it answers
every call with PHP's deprecations and its "headers already sent" and session warnings
around the JSON, and a wrong key with a warning and then ``{"error":"Invalid API key"}``.

- the client reads every action it answers, in CodeIgniter's error view and in PHP's own
  HTML, and counts each answer as salvaged with its worst severity (warning);
- a panel that reads only `order=` (as the MSM "SMM Script" panels do) is learned from
  its first refused batch and polled one order per call;
- a real worker and beat track orders through it to their final statuses, `tracker
  provider sync` succeeds, `tracker stats` counts the salvaged answers by severity; a key
  the panel stops accepting pauses the provider (no status call while paused), and it
  resumes by itself once the key is accepted again.
"""

from __future__ import annotations

import json
import os
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import (
    add_provider,
    cli_runner,
    count_orders,
    order_polls,
    poll_orders,
    print_figures,
    shop_client,
)
# The key probe's settings (a probe after 1 s, doubling to 4 s) and its provider lookup.
from tests.integration.test_key_probe import probe_env, provider_row  # noqa: F401
from tests.support.cluster import Cluster
from tests.support.php_panel import ERROR_VIEWS, PanelOrder, PhpPanel, php_binary
from tests.support.processes import wait_until
from tracker.apiv2.client import CallRecord, ProviderClient
from tracker.apiv2.errors import InvalidKey
from tracker.apiv2.types import Balance, ItemError, OrderReport, RefillReport
from tracker.core.status import OrderStatus, RefillStatus
from tracker.config import get_settings
from tracker.core.clock import utcnow
from tracker.db.models import Order, Provider
from tracker.db.session import unit_of_work
from tracker.orders.enqueue import track_orders
from tracker.providers.gateway import Gateway
from tracker.providers.registry import ProviderSpec, upsert_provider

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def php_installed() -> None:
    if php_binary() is None:
        missing = "php is not installed (Debian: apt-get install php-cli; .ci/run does)"
        if os.environ.get("TRACKER_REQUIRE_PHP") == "1":
            pytest.fail(f"{missing} (the PHP panel tests are required in CI)")
        pytest.skip(missing)

OTHER_KEY = "sk-the-panel-now-wants-this-one-5e6f"


def report(status: OrderStatus, raw: str, remains: int) -> OrderReport:
    return OrderReport(status, raw, Decimal("0.90000"), 3572, remains, "USD")


@pytest.mark.parametrize("errors", ERROR_VIEWS)
def test_the_client_reads_every_action_of_a_real_php_panel(tmp_path: Path, errors: str) -> None:
    records: list[CallRecord] = []
    with PhpPanel(tmp_path / "panel", TEST_API_KEY, errors=errors, shutdown_header=True) as panel:
        panel.seed([
            PanelOrder(7, final="Partial", pending_s=0, progress_s=0),
            PanelOrder(8, final="Completed", pending_s=0, progress_s=0),
            PanelOrder(9, pending_s=600),
        ])
        with ProviderClient(panel.url, TEST_API_KEY, after_call=records.append) as client:
            assert [service.service_id for service in client.services()] == [1, 2]
            assert client.balance() == Balance(Decimal("100.84292"), "USD")
            assert client.status(7) == report(OrderStatus.PARTIAL, "Partial", 157)
            assert client.status_multi([7, 8, 9, 10]) == {
                7: report(OrderStatus.PARTIAL, "Partial", 157),
                8: report(OrderStatus.COMPLETED, "Completed", 0),
                9: report(OrderStatus.PENDING, "Pending", 1000),
                10: ItemError("Incorrect order ID"),
            }
            refill_id = client.refill(8)
            assert client.refill_status(refill_id) == RefillReport(RefillStatus.PENDING, "Pending")
            assert client.refill_status_multi([refill_id, "99"]) == {
                refill_id: RefillReport(RefillStatus.PENDING, "Pending"),
                "99": ItemError("Refill not found"),
            }
            created = client.add(1, "https://example.com/p/1", 100)
            new_order = client.status(created)
            assert isinstance(new_order, OrderReport) and new_order.status is OrderStatus.PENDING
        with ProviderClient(panel.url, "sk-wrong-key-0000", after_call=records.append) as wrong:
            with pytest.raises(InvalidKey):
                wrong.status_multi([7])
    assert [(record.error, record.salvaged) for record in records] == [(None, "warning")] * 9 + [
        ("InvalidKey", "warning")
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_php_panel_reading_only_the_single_forms_is_polled_one_order_at_a_time(
    tracker_env: dict[str, str], tmp_path: Path
) -> None:
    settings = get_settings()
    with PhpPanel(tmp_path / "panel", TEST_API_KEY, single_forms=True) as panel:
        # Under PHP's defaults a batch call prints the panel's "Undefined array key" warning.
        batch = panel.post(key=TEST_API_KEY, action="status", orders="21,22").text
        assert 'Undefined array key "order"' in batch and batch.rstrip().endswith('{"error":"Order not found."}')
        ids = panel.seed([
            PanelOrder(21, pending_s=600),
            PanelOrder(22, pending_s=0, progress_s=0, final="Partial"),
            PanelOrder(23, pending_s=0, progress_s=600),
        ])
        with unit_of_work() as session:
            upsert_provider(
                session, ProviderSpec(name="msm", url=panel.url, api_key=TEST_API_KEY, rate_limit=1000), settings, utcnow()
            )
            track_orders(session, "msm", ids, now=utcnow())
        gateway = Gateway(settings, rate_limiter=None)
        try:
            for _ in range(2):  # the batch form refused once, then one call per order
                for work in order_polls(settings, utcnow()):
                    poll_orders(work.provider_id, work.claim.claim_id, work.claim.row_ids, settings=settings, gateway=gateway)
        finally:
            gateway.close()
        assert len(panel.calls("status")) == 1 + 1 + len(ids)
    with unit_of_work() as session:
        states = dict(session.execute(select(Order.external_id, Order.status)).all())
        assert states == {21: "Pending", 22: "Partial", 23: "In progress"}
        assert session.scalar(select(Provider.supports_multi_status).where(Provider.name == "msm")) is False


def final_states(name: str) -> dict[int, tuple[str | None, int | None]]:
    with unit_of_work() as session:
        rows = session.execute(
            select(Order.external_id, Order.status, Order.remains)
            .join(Provider)
            .where(Provider.name == name, Order.final.is_(True))
        )
        return {int(external_id): (status, remains) for external_id, status, remains in rows}


def raw_answer(panel: PhpPanel, lines: int = 12) -> dict[str, object]:
    """What the panel really sends, for the figures: its size, its first lines, and the
    severities of its CodeIgniter blocks before and after the JSON."""
    answer = panel.post(key=TEST_API_KEY, action="status", orders="1,2").text
    before, _, after = answer.partition('{"1":')
    return {
        "raw answer bytes": len(answer.encode()),
        "severities before the JSON": re.findall(r"<p>Severity: ([^<]*)</p>", before),
        "severities after it": re.findall(r"<p>Severity: ([^<]*)</p>", after),
        "raw answer first lines": json.dumps(answer.splitlines()[:lines]),
    }


@pytest.mark.slow  # about 25 s here (2 busy cores)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_tracking_through_a_real_php_panel(
    probe_env: dict[str, str],
    broker_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = cli_runner(capsys)
    first = [
        PanelOrder(1, pending_s=1, progress_s=2, final="Completed"),
        PanelOrder(2, pending_s=1, progress_s=3, final="Partial"),
        PanelOrder(3, pending_s=0.5, progress_s=1, final="Canceled"),
        PanelOrder(4, pending_s=2, progress_s=2, final="Completed", service=2),
    ]
    # Still under way when the key stops working; final after it works again.
    second = [PanelOrder(order_id, pending_s=1, progress_s=8, final="Completed") for order_id in (11, 12, 13)]
    figures: dict[str, object] = {}
    started = time.monotonic()
    with PhpPanel(tmp_path / "panel", TEST_API_KEY, shutdown_header=True) as panel, Cluster(
        probe_env, tmp_path / "logs"
    ) as cluster:
        raw = raw_answer(panel)
        add_provider("ci-panel", panel.url, monkeypatch, "--rate-limit", "20")
        assert run("provider", "sync", "ci-panel")[0] == 0
        cluster.worker()
        cluster.beat()
        shop = shop_client(broker_url)
        shop.send_task("tracker.track_orders", args=["ci-panel", panel.seed(first)])
        wait_until(lambda: count_orders("ci-panel", final=True) == len(first), timeout=30, what="the first orders final")
        assert final_states("ci-panel") == {
            order.order_id: (order.final, order.final_remains) for order in first
        }

        code, out, _ = run("stats", "--json")
        [view] = json.loads(out)
        assert code == 0 and view["healthy"] and view["errors_last_hour"] == 0
        by_severity = view["salvaged_last_hour_by_severity"]
        assert by_severity["warning"] == view["salvaged_last_hour"] == view["calls_last_hour"] > 0
        assert by_severity["deprecated"] == by_severity["notice"] == 0
        figures["calls before the key change"] = view["calls_last_hour"]

        # The panel stops accepting the key while orders are under way.
        shop.send_task("tracker.track_orders", args=["ci-panel", panel.seed(second)])
        wait_until(lambda: panel.calls("status", since=time.time() - 0.5) != [], timeout=10, what="status calls")
        panel.accept_key(OTHER_KEY)
        wait_until(lambda: provider_row("ci-panel").paused, timeout=15, interval=0.05, what="the provider paused")
        paused_at = time.time()
        wait_until(lambda: provider_row("ci-panel").key_probe_failures >= 1, timeout=15, what="a rejected probe")
        panel.accept_key(TEST_API_KEY)
        restored_at = time.time()
        wait_until(lambda: not provider_row("ci-panel").paused, timeout=15, interval=0.05, what="the provider resumed")
        figures["s from pause to resume"] = round(time.time() - paused_at, 1)
        # A call already on its way when the pause was written may still arrive just after.
        during_pause = [at for at in panel.calls("status", since=paused_at + 0.5) if at < restored_at]
        assert during_pause == [], "a paused provider got status calls"
        wait_until(
            lambda: count_orders("ci-panel", final=True) == len(first) + len(second), timeout=30, what="every order final"
        )
        assert provider_row("ci-panel").paused_reason is None
        output = "".join(cluster.output().values())
        assert TEST_API_KEY not in output and OTHER_KEY not in output
    figures["s in all"] = round(time.monotonic() - started, 1)
    figures.update(raw)
    print_figures("php panel (php -n -S, CodeIgniter error view)", figures)

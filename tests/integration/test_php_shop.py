"""The shop's side in PHP: examples/php-shop/webhook.php under ``php -S`` against MariaDB.

The first test drives the receiver with signed events built by the tracker's own code:
each event applied once, in one transaction, only forward, each order refunded once.
The second is the whole path: the PHP kit enqueues 1,000 sim orders (half through Redis,
half through Flower), a real worker and beat track them, the tracker delivers every
transition to the receiver, which fails some deliveries halfway; everything is resent;
at the end the shop's table equals the providers' truth and each refund was credited once.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from tests.integration.helpers import add_provider, count_orders, print_figures
from tests.support.cluster import Cluster
from tests.support.databases import SERVER_DATABASES
from tests.support.network import answers, listening
from tests.support.php_shop import (
    SHOP,
    ShopDatabase,
    fail_first_application,
    php_receiver,
    require_php,
    run_kit,
    shop_database,
)
from tests.support.processes import wait_until
from tracker.cli.main import main as tracker_cli
from tracker.config import reset_settings
from tracker.core.outbox_events import order_transition, refill_transition
from tracker.core.status import OrderStatus
from tracker.core.tracking import Transition
from tracker.db.models import Drop, OutboxEvent
from tracker.db.session import unit_of_work
from tracker.ops.bundled_redis import free_port
from tracker.outbox.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

SECRET = "whsec-php-shop-3a9d"
SHOP_STATUS = {
    "Pending": "pending", "In progress": "inprogress", "Completed": "completed",
    "Partial": "partial", "Canceled": "canceled",
}
CENT = Decimal("0.0001")


@pytest.fixture(autouse=True)
def php() -> None:
    require_php()


def post(url: str, event: dict[str, Any], *, secret: str = SECRET, timestamp: int | None = None,
         body: bytes | None = None) -> requests.Response:
    """One delivery as the tracker makes it (tracker.outbox.delivery.Sinks.deliver)."""
    raw = json.dumps(event, separators=(",", ":")).encode()
    signed_at = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        EVENT_ID_HEADER: str(event.get("id")),
        TIMESTAMP_HEADER: str(signed_at),
        SIGNATURE_HEADER: sign(secret, signed_at, raw),
    }
    return requests.post(url, data=raw if body is None else body, headers=headers, timeout=30)


def order_event(order_id: int, to_status: str, remains: int, charge: str, *, at: datetime,
                from_status: str | None = None, quantity: int | None = 1000) -> dict[str, Any]:
    """An ``order.status_changed`` event exactly as the tracker builds it."""
    transition = Transition(
        OrderStatus(from_status) if from_status else None, OrderStatus(to_status), to_status, remains,
        Decimal(charge), 500,
    )
    return order_transition(
        provider_id=1, provider_name="panel", order_row_id=order_id, external_id=order_id, service_id=3,
        quantity=quantity, currency="USD", transition=transition, at=at,
    ).payload


def add_shop_orders(shop: ShopDatabase, provider: str, rows: list[tuple[int, int, int, str]]) -> None:
    """Orders of provider ``provider`` (created when missing): (uid, api_order_id, quantity, charge)."""
    shop.execute(
        "INSERT IGNORE INTO api_providers (name, url, tracker_name) VALUES (%s, %s, %s)",
        (f"Panel {provider}", "https://panel.example/api/v2", provider),
    )
    shop.execute(
        "INSERT INTO orders (uid, api_provider_id, api_service_id, api_order_id, quantity, charge)"
        " SELECT %s, id, 3, %s, %s, %s FROM api_providers WHERE tracker_name = %s",
        [(uid, order_id, quantity, charge, provider) for uid, order_id, quantity, charge in rows],
    )


def add_users(shop: ShopDatabase, count: int) -> None:
    shop.execute("INSERT INTO users (email) VALUES (%s)", [(f"user{n}@shop.example",) for n in range(1, count + 1)])


def order_row(shop: ShopDatabase, order_id: int) -> dict[str, Any]:
    [row] = shop.query("SELECT * FROM orders WHERE api_order_id = %s", (order_id,))
    return row


def balance(shop: ShopDatabase, uid: int = 1) -> Decimal:
    return Decimal(shop.query("SELECT balance FROM users WHERE id = %s", (uid,))[0]["balance"])


def outcome(response: requests.Response) -> str:
    assert response.status_code == 200, (response.status_code, response.text)
    return str(response.json()["outcome"])


def test_the_receiver_applies_each_event_once_forward_only_and_refunds_each_order_once(tmp_path: Path) -> None:
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with shop_database() as shop:
        add_users(shop, 2)
        add_shop_orders(shop, "panel", [(1, 501, 1000, "12.0000"), (1, 502, 1000, "10.0000"), (2, 503, 300, "9.0000")])
        with php_receiver({**shop.php_env(), "TRACKER_WEBHOOK_SECRET": SECRET}, tmp_path) as (url, receiver):
            # Forward: Pending, In progress, Partial with 40 % undelivered: 40 % of 12.00 back.
            pending = order_event(501, "Pending", 1000, "1.00", at=t0)
            progress = order_event(501, "In progress", 700, "1.00", at=t0 + timedelta(seconds=5), from_status="Pending")
            partial = order_event(501, "Partial", 400, "0.60", at=t0 + timedelta(seconds=9), from_status="In progress")
            assert [outcome(post(url, event)) for event in (pending, progress, partial)] == ["applied"] * 3
            row = order_row(shop, 501)
            assert (row["status"], row["remains"], row["start_counter"]) == ("partial", 400, 500)
            assert (row["provider_charge"], row["refunded"]) == (Decimal("0.6"), Decimal("4.8"))
            assert balance(shop) == Decimal("4.8")

            # The same event again (at least once): nothing more.
            assert outcome(post(url, partial)) == "duplicate"
            # An older event the shop never saw (resent after the shop lost its table of
            # event IDs): the row does not move back.
            late = order_event(501, "In progress", 900, "1.00", at=t0 + timedelta(seconds=3), from_status="Pending")
            assert outcome(post(url, late)) == "stale"
            assert order_row(shop, 501)["status"] == "partial"
            # A new event for the same final status (the provider corrected its charge): applied,
            # but the order was refunded already.
            corrected = order_event(501, "Partial", 400, "0.58", at=t0 + timedelta(seconds=20), from_status="Partial")
            assert outcome(post(url, corrected)) == "applied"
            assert order_row(shop, 501)["provider_charge"] == Decimal("0.58")
            assert balance(shop) == Decimal("4.8")
            # Partial, then Canceled: only the difference, to the whole charge.
            canceled = order_event(501, "Canceled", 1000, "0", at=t0 + timedelta(seconds=30), from_status="Partial")
            assert outcome(post(url, canceled)) == "applied"
            assert (order_row(shop, 501)["refunded"], balance(shop)) == (Decimal("12"), Decimal("12"))
            # Canceled, then Completed after all: the row follows, no money is taken back by itself.
            completed = order_event(501, "Completed", 0, "1.00", at=t0 + timedelta(seconds=40), from_status="Canceled")
            assert outcome(post(url, completed)) == "applied"
            assert (order_row(shop, 501)["status"], balance(shop)) == ("completed", Decimal("12"))

            # No quantity given to the tracker (no refund_fraction): the shop's own quantity.
            no_fraction = order_event(502, "Partial", 250, "0.3", at=t0, quantity=None)
            assert no_fraction["refund_fraction"] is None
            assert outcome(post(url, no_fraction)) == "applied"
            assert balance(shop) == Decimal("14.5")

            # Half a cent rounds up, also where remains / quantity has no end in decimals:
            # 0.925 x 1145/2500 = 0.42365 and 2.59 x 3865/7000 = 1.43005, exactly.
            add_shop_orders(shop, "panel", [(2, 505, 2500, "0.9250"), (2, 506, 7000, "2.5900")])
            for order_id, ordered, remains, refund in ((505, 2500, 1145, "0.4237"), (506, 7000, 3865, "1.4301")):
                half = order_event(order_id, "Partial", remains, "0.1", at=t0, quantity=ordered)
                assert outcome(post(url, half)) == "applied"
                assert order_row(shop, order_id)["refunded"] == Decimal(refund), order_id
            shop.execute("UPDATE users SET balance = 0 WHERE id = 2")

            # Eight concurrent deliveries of one event: credited once.
            twice = order_event(503, "Partial", 100, "0.1", at=t0, quantity=300)
            with ThreadPoolExecutor(8) as pool:
                outcomes = Counter(outcome(answer) for answer in pool.map(lambda _: post(url, twice), range(8)))
            assert outcomes == {"applied": 1, "duplicate": 7}
            assert balance(shop, 2) == Decimal("3")

            # An order the shop does not have (yet): refused, so the tracker delivers it again.
            early = order_event(504, "Completed", 0, "0.5", at=t0)
            assert post(url, early).status_code == 404
            add_shop_orders(shop, "panel", [(2, 504, 1000, "1.0000")])
            assert outcome(post(url, early)) == "applied"
            # Refill events and provider alerts are recorded, not applied.
            refill = refill_transition(
                provider_id=1, provider_name="panel", order_row_id=1, external_order_id=501, refill_id="9",
                from_status=None, to_status="Pending", raw_status="Pending", at=t0,
            ).payload
            assert outcome(post(url, refill)) == "ignored"

            # Refused before anything is written: forged, stale, tampered, not an event.
            fresh = order_event(503, "Canceled", 300, "0", at=t0 + timedelta(minutes=1), quantity=300)
            raw = json.dumps(fresh, separators=(",", ":")).encode()
            assert post(url, fresh, secret="forged-secret").status_code == 401
            assert post(url, fresh, timestamp=int(time.time()) - 301).status_code == 401
            assert post(url, fresh, body=raw.replace(b'"Canceled"', b'"Completed"')).status_code == 401
            unsigned = requests.post(url, data=raw, headers={"Content-Type": "application/json"}, timeout=10)
            assert unsigned.status_code == 401
            assert post(url, {"hello": "world"}).status_code == 400
            assert requests.get(url, timeout=10).status_code == 405
            assert balance(shop, 2) == Decimal("3")
            assert not shop.query("SELECT 1 FROM tracker_events WHERE event_id = %s", (fresh["id"],))

            # A failure halfway (after the event was recorded and the refund credited):
            # everything rolls back, 500; the next delivery applies it, once.
            fail_first_application(shop, "NEW.status = 'canceled'")
            failed = post(url, fresh)
            assert failed.status_code == 500, failed.text
            assert balance(shop, 2) == Decimal("3")
            assert order_row(shop, 503)["status"] == "partial"
            assert not shop.query("SELECT 1 FROM tracker_events WHERE event_id = %s", (fresh["id"],))
            assert outcome(post(url, fresh)) == "applied"
            assert balance(shop, 2) == Decimal("9")

            # The events table says what each event did.
            credited = shop.query(
                "SELECT o.api_order_id, e.refund FROM tracker_events e JOIN orders o ON o.id = e.order_id"
                " WHERE e.refund > 0 ORDER BY e.applied_at"
            )
            assert [(row["api_order_id"], row["refund"]) for row in credited] == [
                (501, Decimal("4.8")), (501, Decimal("7.2")), (502, Decimal("2.5")), (505, Decimal("0.4237")),
                (506, Decimal("1.4301")), (503, Decimal("3")), (503, Decimal("6")),
            ]
            log = receiver.output()
            assert "tracker webhook refused: the signature does not match" in log
            assert re.search(r"tracker webhook refused: the timestamp is 3\d\d s away from this host's clock", log)
            assert "injected fault" in log
        # php -S and its worker processes are gone with the block: nothing answers any more.
        assert not listening(int(url.rsplit(":", 1)[1].split("/")[0]))



def lock_waits(shop: ShopDatabase) -> int:
    """Transactions of this shop's database waiting for a row lock."""
    return int(shop.query(
        "SELECT COUNT(*) AS n FROM information_schema.innodb_trx t"
        " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
        " WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"
    )[0]["n"])


def locking_reads(shop: ShopDatabase) -> int:
    """Connections of this shop's database inside the receiver's locking read of an order.
    InnoDB lists a transaction as waiting only once the read reaches its lock queue, which
    MariaDB's optimizer sometimes takes seconds to get to (it reads const rows while it
    plans); the statement itself shows at once, and a read that has started cannot get
    the row before one already queued for it."""
    return int(shop.query(
        "SELECT COUNT(*) AS n FROM information_schema.processlist"
        " WHERE db = DATABASE() AND command = 'Execute' AND info LIKE '%FROM orders WHERE%FOR UPDATE%'"
    )[0]["n"])


def test_two_events_of_one_order_delivered_at_once_credit_its_refund_once(tmp_path: Path) -> None:
    """A Partial and a later Canceled event of one order arrive together while its row is
    locked (by a slow delivery before them, say): both wait for the row with their
    transactions begun. The Canceled one gets it second and must credit what is owed after
    the Partial one's credit, not after what the database held when its transaction began."""
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with shop_database() as shop:
        add_users(shop, 1)
        add_shop_orders(shop, "panel", [(1, 601, 1000, "10.0000")])
        partial = order_event(601, "Partial", 400, "0.6", at=t0, from_status="In progress")
        canceled = order_event(601, "Canceled", 1000, "0", at=t0 + timedelta(seconds=10), from_status="Partial")
        env = {**shop.php_env(), "TRACKER_WEBHOOK_SECRET": SECRET}
        with php_receiver(env, tmp_path, workers=2) as (url, _), ThreadPoolExecutor(2) as pool:
            holder = shop.connect()
            try:
                with holder.cursor() as cursor:
                    cursor.execute("BEGIN")
                    cursor.execute("SELECT id FROM orders WHERE api_order_id = 601 FOR UPDATE")
                # The Partial first: the older transaction is granted the row first.
                first = pool.submit(post, url, partial)
                wait_until(lambda: lock_waits(shop) == 1, timeout=30, interval=0.05, what="the Partial waiting")
                second = pool.submit(post, url, canceled)
                wait_until(lambda: locking_reads(shop) == 2, timeout=30, interval=0.05, what="the Canceled waiting")
                holder.commit()
            finally:
                holder.close()
            assert [outcome(first.result()), outcome(second.result())] == ["applied", "applied"]
        credited = shop.query("SELECT refund FROM tracker_events ORDER BY applied_at")
        assert [row["refund"] for row in credited] == [Decimal("4"), Decimal("6")]
        assert (order_row(shop, 601)["refunded"], balance(shop)) == (Decimal("10"), Decimal("10"))


# --- the whole path -----------------------------------------------------------------------

PROVIDERS = {"std": "standard", "promo": "promobox"}   # tracker name: sim dialect
QUANTITIES = (1000, 2500, 4000, 7000)
ORDERS_PER_BATCH = 125                                   # 4 batches x 2 providers: 1,000 orders
SHOP_RATE = Decimal("0.37")                              # the shop's price per 1000
USERS = 20
# Sim seconds per real second, and each order's plan: 1.5 s Pending, 2 s In progress, so
# the worker sees each order in several states.
SPEED = 20.0
PENDING_S, PROGRESS_S = 30.0, 40.0
FLOWER_AUTH = ("shop", "flower-pass-7c2e")
# The receiver fails halfway the first delivery of every refund and of about 10 % of the
# other events (by their ID's first byte).
FAULTS = "NEW.status IN ('partial', 'canceled') OR CONV(LEFT(NEW.tracker_event_id, 2), 16, 10) < 26"


def expected_refund(status: str, remains: int, quantity: int, charge: Decimal) -> Decimal:
    """The refund the guide promises: all of a Canceled order's charge, the undelivered
    share of a Partial one's, to the cent (half up), in exact fractions."""
    if status not in ("Partial", "Canceled"):
        return Decimal(0)
    undelivered = quantity if status == "Canceled" else min(max(remains, 0), quantity)
    cents = Fraction(charge) * Fraction(undelivered, quantity) / Fraction(CENT)
    return math.floor(cents + Fraction(1, 2)) * CENT


def backfill(env: dict[str, str], provider: str) -> str:
    completed = subprocess.run(
        ["php", str(SHOP / "backfill.php"), f"--provider={provider}"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout.strip()


def outbox_counts() -> tuple[int, int, int]:
    """(events, events not yet delivered or failed, delivery attempts since recorded or resent)."""
    with unit_of_work() as session:
        total, attempts = session.execute(select(func.count(), func.coalesce(func.sum(OutboxEvent.attempts), 0))).one()
        open_ = session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.final.is_(False)))
    return int(total), int(open_ or 0), int(attempts)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", [SERVER_DATABASES[1]], indirect=True)
def test_a_php_shop_ends_equal_to_the_providers_truth_with_each_refund_credited_once(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    flower_port = free_port()
    flower_url = f"http://127.0.0.1:{flower_port}"
    sims = {
        name: SimServer(dialect=dialect, speed=SPEED, seed=70 + index) for index, (name, dialect) in enumerate(PROVIDERS.items())
    }
    with shop_database() as shop, Cluster(tracker_env, tmp_path / "logs") as cluster:
        for sim in sims.values():
            cluster.enter_context(sim)
        for name, sim in sims.items():
            add_provider(name, sim.url, monkeypatch, "--rate-limit", "50")
        add_users(shop, USERS)
        fail_first_application(shop, FAULTS)
        url, _ = cluster.enter_context(php_receiver({**shop.php_env(), "TRACKER_WEBHOOK_SECRET": SECRET}, tmp_path))
        webhook = {"TRACKER_WEBHOOK_URL": url, "TRACKER_WEBHOOK_SECRET": SECRET}
        for variable, value in webhook.items():
            monkeypatch.setenv(variable, value)  # for `tracker events resend`, in this process
        reset_settings()
        cluster.env = {**tracker_env, **webhook, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}
        cluster.tracker_command("flower", "flower", "--address", "127.0.0.1", "--port", str(flower_port))
        cluster.worker()
        cluster.beat()
        wait_until(lambda: answers(f"{flower_url}/healthcheck"), timeout=60, what="Flower up")

        # The shop places its orders (the sims seed them) and keeps its own rows of them.
        quantity: dict[tuple[str, int], int] = {}
        for name, sim in sims.items():
            rows = []
            for batch, ordered in enumerate(QUANTITIES):
                price = str((SHOP_RATE * ordered / 1000).quantize(CENT))
                seeded = sim.seed_orders(
                    count=ORDERS_PER_BATCH, service=3, quantity=ordered, pending_s=PENDING_S, progress_s=PROGRESS_S
                )
                for order_id in seeded:
                    quantity[name, order_id] = ordered
                    rows.append((1 + (order_id + batch) % USERS, order_id, ordered, price))
            add_shop_orders(shop, name, rows)

        # ...and hands them to the tracker with the PHP kit: one provider through Redis,
        # the other through Flower.
        php_env = shop.php_env()
        handing = time.monotonic()
        through_redis = backfill({**php_env, "TRACKER_URL": broker_url}, "std")
        redis_seconds = time.monotonic() - handing
        through_flower = backfill(
            {**php_env, "TRACKER_URL": flower_url, "FLOWER_USER": FLOWER_AUTH[0], "FLOWER_PASSWORD": FLOWER_AUTH[1]}, "promo"
        )
        flower_seconds = time.monotonic() - handing - redis_seconds
        assert through_redis == "handed 500 open orders to the tracker in 4 calls (provider std)"
        assert through_flower == "handed 500 open orders to the tracker in 4 calls (provider promo)"
        code, refused = run_kit(
            [{"call": "trackOrders", "provider": "promo", "ids": [1]}], flower_url, user="shop", password="wrong"
        )
        assert code == 1 and refused["message"].startswith(f"Flower at {flower_url} refused the credentials (HTTP 401)")

        total = len(quantity)
        enqueued = time.monotonic()
        wait_until(
            lambda: sum(count_orders(name, final=True) for name in sims) == total, timeout=120, what="every order final"
        )
        all_final = time.monotonic()
        wait_until(lambda: outbox_counts()[1] == 0, timeout=120, what="every event delivered")
        all_delivered = time.monotonic()
        events, _, first_deliveries = outbox_counts()
        faults = int(shop.query("SELECT COUNT(*) AS n FROM injected_faults")[0]["n"])

        # Drops reported from PHP, through each transport, reach the worker too.
        completed = shop.query(
            "SELECT p.tracker_name, MIN(o.api_order_id) AS id FROM orders o JOIN api_providers p ON p.id = o.api_provider_id"
            " WHERE o.status = 'completed' GROUP BY p.tracker_name"
        )
        drop_tasks = []
        for row in completed:
            target = broker_url if row["tracker_name"] == "std" else flower_url
            code, [drop] = run_kit(
                [{"call": "reportDrop", "provider": row["tracker_name"], "id": row["id"]}],
                target, user=FLOWER_AUTH[0], password=FLOWER_AUTH[1],
            )
            assert code == 0 and drop["task_id"] and drop["sent"] == [row["id"]], drop
            drop_tasks.append(drop["task_id"])

        def drops() -> int:
            with unit_of_work() as session:
                return int(session.scalar(select(func.count()).select_from(Drop)) or 0)

        wait_until(lambda: drops() == 2, timeout=60, what="both drops recorded")

        # Where the guide sends a shop to read what the tracker said: Flower's task info.
        def task_state(task_id: str) -> str:
            info = requests.get(f"{flower_url}/api/task/info/{task_id}", auth=FLOWER_AUTH, timeout=10)
            return str(info.json().get("state")) if info.status_code == 200 else f"HTTP {info.status_code}"

        wait_until(lambda: [task_state(task) for task in drop_tasks] == ["SUCCESS"] * 2, timeout=30, what="Flower's task info")

        credits = Counter(
            row["order_id"] for row in shop.query("SELECT order_id FROM tracker_events WHERE refund > 0")
        )
        # The shop loses a fifth of its table of applied events, then every event is
        # delivered again: nothing moves back, nothing is refunded twice.
        resent_from = shop.query("SELECT NOW(6) AS now")[0]["now"]
        forgotten = shop.execute(
            "DELETE e FROM tracker_events e JOIN orders o ON o.id = e.order_id WHERE o.id % 5 = 0"
        )
        assert tracker_cli(["events", "resend"]) == 0
        with unit_of_work() as session:
            resent = int(
                session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.resent_at.is_not(None)))
                or 0
            )
        assert resent == events
        resend_started = time.monotonic()
        wait_until(lambda: outbox_counts()[1] == 0, timeout=120, what="every resent event delivered")
        resend_seconds = time.monotonic() - resend_started
        redeliveries = outbox_counts()[2]

        # The shop's table against the providers' truth, order by order.
        truth = {
            (name, order_id): value
            for name, sim in sims.items()
            for order_id, value in sim.truth([i for n, i in quantity if n == name]).items()
        }
        shop_orders = {
            (row["tracker_name"], int(row["api_order_id"])): row
            for row in shop.query("SELECT o.*, p.tracker_name FROM orders o JOIN api_providers p ON p.id = o.api_provider_id")
        }
        since_resend = shop.query("SELECT * FROM tracker_events WHERE applied_at >= %s", (resent_from,))
        reapplied = Counter(row["outcome"] for row in since_resend)
        credited_again = [row for row in since_resend if row["refund"]]
        balances = {int(row["id"]): Decimal(row["balance"]) for row in shop.query("SELECT id, balance FROM users")}

    mismatches: dict[str, str] = {}
    owed: defaultdict[int, Decimal] = defaultdict(Decimal)
    outcomes: Counter[str] = Counter()
    refund_orders = 0
    for key, row in shop_orders.items():
        expected = truth[key]
        assert expected is not None
        outcomes[expected["status"]] += 1
        refund = expected_refund(expected["status"], expected["remains"], quantity[key], Decimal(row["charge"]))
        owed[int(row["uid"])] += refund
        wanted = {
            "status": SHOP_STATUS[expected["status"]],
            "remains": expected["remains"],
            "start_counter": expected["start_count"],
            "provider_charge": Decimal(expected["charge"]),
            "refunded": refund,
            "refund credits": 1 if refund else 0,
        }
        found = {**{name: row[name] for name in wanted if name in row}, "refund credits": credits[row["id"]]}
        if found != wanted:
            mismatches[f"{key[0]}/{key[1]}"] = f"shop has {found}, truth is {wanted}"
        refund_orders += bool(refund)
    for uid, amount in balances.items():
        if amount != owed[uid]:
            mismatches[f"user {uid}"] = f"balance {amount}, refunds owed {owed[uid]}"
    assert len(shop_orders) == len(truth) == 1000
    assert credited_again == []
    assert reapplied == {"stale": forgotten}, reapplied
    assert not mismatches, json.dumps(dict(list(mismatches.items())[:5]), indent=1)
    assert outcomes["Partial"] and outcomes["Canceled"], outcomes
    assert faults > refund_orders, "every refund failed halfway once, and some other events"
    # Each failure cost one more delivery of its event, and nothing else failed.
    assert first_deliveries == events + faults
    assert redeliveries == resent
    print_figures(
        "php shop",
        {
            "orders": len(shop_orders), "backfill_seconds_redis": round(redis_seconds, 2),
            "backfill_seconds_flower": round(flower_seconds, 2),
            "events": events, "deliveries": first_deliveries + redeliveries, "failed_halfway": faults,
            "redelivered": resent, "applied_events_forgotten": forgotten,
            "refunds_credited": sum(credits.values()), "refund_orders": refund_orders,
            "Partial": outcomes["Partial"], "Canceled": outcomes["Canceled"],
            "mismatches": len(mismatches), "seconds_to_all_final": round(all_final - enqueued, 1),
            "seconds_to_all_delivered": round(all_delivered - enqueued, 1), "seconds_to_redeliver": round(resend_seconds, 1),
            "seconds": round(time.monotonic() - started, 1),
        },
    )

"""Refills and cancels end to end, with real parts only: the simulated providers over
HTTP, a real worker and beat, a shop's bare Celery client, the CLI, and SQLite or
PostgreSQL. Each scenario is checked by what the database holds afterwards.

The module's ``e2e`` fixture runs every scenario at once against the same tracker, once
per backend, so the worker and beat start once (the runtime stays modest); one test per
check below reads what it left, so one failed check does not hide the others:

- drops reported by the shop lead to refill requests, refills, and polls to Completed;
- a refill for an order that did not drop ends Rejected;
- a service without refill, and a closed guarantee window, get a drop record and no
  refill request (the CLI exits 1 with the reason);
- a "too early" answer is retried (Celery countdown, back-off) and then accepted;
- the count probe (``tracker.refills.count_probe_plugins.sim_count_probe``) finds a drop nobody reported;
- refill_status calls carry at most 100 IDs (120 refills due at once go as 100 + 20);
- a provider that only answers single refill_status calls is learned and polled so;
- the scheduled policy (auto-refill) requests a refill by itself;
- cancel: at most 100 IDs per call, refused IDs with reasons, the new status by polling.

The attempt paths that need a precise sequence (a lost answer, a long wait kept in the
database, refill disabled, the attempt cap) run in process against the same sim and
database, one step at a time.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import (
    add_provider,
    order_polls,
    poll_orders,
    print_figures,
    refill_attempts,
    shop_client,
)
from tests.support import processes
from tests.support.databases import ALL_DATABASES
from tests.support.deployment import module_deployment
from tests.support.processes import wait_until
from tracker.cli.main import main as tracker_cli
from tracker.core.clock import utcnow
from tracker.config import Settings, get_settings
from tracker.db.models import (
    CancelRequest,
    Drop,
    Order,
    Provider,
    Refill,
    RefillAttempt,
    RefillRequest,
    Service,
)
from tracker.db.session import unit_of_work
from tracker.sim.catalog import (
    SERVICE_FOLLOWERS_REFILL_CANCEL as REFILL_CANCEL,
)
from tracker.sim.catalog import (
    SERVICE_LIKES_PLAIN as PLAIN,
)
from tracker.sim.catalog import (
    SERVICE_MEMBERS_REFILL_CANCEL as REFILL_CANCEL_2,
)
from tracker.sim.catalog import (
    SERVICE_VIEWS_REFILL as REFILL_ONLY,
)
from tracker.sim.server import SimServer
from tracker.orders.enqueue import track_orders
from tracker.providers.gateway import Gateway
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.refills.attempts import AttemptReport, attempt_refill
from tracker.refills.drops import report_drop
from tracker.orders.views import order_detail

pytestmark = pytest.mark.integration

SPEED = 10.0  # sim seconds per real second
TOO_EARLY_S = 60.0  # sim seconds after completion before the sim accepts a refill
LONG_AGO = 10_000.0  # sim seconds: orders seeded this old are final at once
BULK = 120
CANCELS = 105
FINAL_REFILL = ("Completed", "Rejected", "Canceled", "Not found")


REFILL_ENV = {
    "TRACKER_REFILL_RETRY_BASE": "1",
    "TRACKER_REFILL_RETRY_CAP": "2",
    "TRACKER_COUNT_PROBE": "tracker.refills.count_probe_plugins.sim_count_probe",
    "TRACKER_COUNT_PROBE_INTERVAL": "1",
    "TRACKER_AUTO_REFILL_SCAN_INTERVAL": "1",
}


def simulated(dialect: str, seed: int) -> SimServer:
    return SimServer(
        dialect=dialect,
        speed=SPEED,
        seed=seed,
        natural_drops=False,
        refill_too_early_s=TOO_EARLY_S,
        refill_pending_s=10.0,
        refill_progress_s=10.0,
        cancel_delay_s=2.0,
    )


# --- reading the database ------------------------------------------------------------------


def orders_of(provider: str, ids: Sequence[int]) -> list[Order]:
    with unit_of_work() as session:
        return list(
            session.scalars(
                select(Order)
                .join(Provider)
                .where(Provider.name == provider, Order.external_id.in_(ids))
            )
        )


def all_have_status(provider: str, ids: Sequence[int], statuses: Sequence[str]) -> bool:
    found = orders_of(provider, ids)
    return len(found) == len(ids) and all(order.status in statuses for order in found)


def refill_statuses(provider: str, ids: Sequence[int]) -> list[str | None]:
    with unit_of_work() as session:
        return list(
            session.scalars(
                select(Refill.status)
                .join(Order, Order.id == Refill.order_id)
                .join(Provider, Provider.id == Order.provider_id)
                .where(Provider.name == provider, Order.external_id.in_(ids))
            )
        )


def refills_final(
    provider: str, ids: Sequence[int], at_least: int | None = None
) -> bool:
    statuses = refill_statuses(provider, ids)
    return len(statuses) >= (at_least if at_least is not None else len(ids)) and all(
        status in FINAL_REFILL for status in statuses
    )


def detail(provider: str, order_id: int) -> dict[str, Any]:
    with unit_of_work() as session:
        order = session.scalars(
            select(Order)
            .join(Provider)
            .where(Provider.name == provider, Order.external_id == order_id)
        ).one()
        return order_detail(session, order, provider)


def count(model: type[Any], *where: Any) -> int:
    with unit_of_work() as session:
        return int(
            session.scalar(select(func.count()).select_from(model).where(*where)) or 0
        )


def refill_history_matches(view: dict[str, Any], truth: dict[str, Any]) -> bool:
    """Our events are the sim's refill timeline, in order, each once, ending where it ends."""
    recorded = [event["to_status"] for event in view["events"]]
    timeline = [entry["status"] for entry in truth["timeline"]]
    chain_ok = all(
        later["from_status"] == earlier["to_status"]
        for earlier, later in zip(view["events"], view["events"][1:], strict=False)
    )
    position = 0
    for status in recorded:
        while position < len(timeline) and timeline[position] != status:
            position += 1
        if position == len(timeline):
            return False
        position += 1
    return (
        chain_ok
        and bool(recorded)
        and recorded[-1] == truth["status"] == view["status"]
    )


# --- the scenario, run once per database; one test per check ------------------------------------


@dataclass
class EndToEnd:
    """What the scenario left: its orders' IDs, the sims' counters, and the CLI's answers."""

    bulk: list[int] = field(default_factory=list)
    no_drop: int = 0
    plain: int = 0
    closed: int = 0
    cancels: list[int] = field(default_factory=list)
    no_cancel: int = 0
    dropped_single: list[int] = field(default_factory=list)
    scheduled: int = 0
    early: int = 0
    probed: int = 0
    cancel_code: int | None = None
    cancel_lines: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (exit code, stderr) of `tracker report-drop` for the plain and the expired order.
    refused_drops: dict[str, tuple[int, str]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    single_stats: dict[str, Any] = field(default_factory=dict)
    refill_truth: dict[int, Any] = field(default_factory=dict)
    database: str = ""
    # The first step that did not complete (the scenario stops there), and why.
    failed: tuple[str, str] | None = None

    def step(self, what: str, action: Callable[[], None]) -> None:
        """Runs a step unless an earlier one failed; a failure is kept, not raised, so every
        check still runs on what the database holds and reports what it finds."""
        if self.failed is not None:
            return
        try:
            action()
        except (TimeoutError, AssertionError) as exc:
            self.failed = (what, str(exc) or type(exc).__name__)

    def require(self) -> None:
        """For the checks of data the scenario only has once every step ran."""
        if self.failed is not None:
            pytest.fail(f"the scenario stopped at {self.failed[0]}: {self.failed[1]}")


def _cli(args: list[str]) -> tuple[int, str, str]:
    """`tracker ...` in process: exit code, stdout, stderr (no capsys at module scope)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = tracker_cli(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module", params=ALL_DATABASES)
def e2e(
    request: pytest.FixtureRequest, redis_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EndToEnd]:
    tmp_path = tmp_path_factory.mktemp(f"refills-{request.param}")
    with module_deployment(request, redis_base_url, tmp_path, REFILL_ENV) as (refill_env, monkeypatch):
        seen = EndToEnd(database=refill_env["TRACKER_DATABASE_URL"].split(":")[0])
        _run_end_to_end(seen, refill_env, tmp_path / "logs", monkeypatch)
        yield seen
        _print_end_to_end_figures(seen)


def _run_end_to_end(seen: EndToEnd, refill_env: dict[str, str], logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker_url = refill_env["TRACKER_BROKER_URL"]
    with simulated("standard", 31) as sim, simulated("singles", 32) as singles:
        add_provider("main", sim.url, monkeypatch, "--rate-limit", "200")
        add_provider(
            "expired", sim.url, monkeypatch, "--rate-limit", "200", "--refill-days", "0"
        )
        add_provider("single", singles.url, monkeypatch, "--rate-limit", "200")

        seen.bulk = sim.seed_orders(
            count=BULK, service=REFILL_CANCEL, outcome="Completed", age_s=LONG_AGO
        )
        [seen.no_drop] = sim.seed_orders(
            service=REFILL_ONLY, outcome="Completed", age_s=LONG_AGO
        )
        [seen.plain] = sim.seed_orders(service=PLAIN, outcome="Completed", age_s=LONG_AGO)
        [seen.closed] = sim.seed_orders(
            service=REFILL_CANCEL, outcome="Completed", age_s=LONG_AGO
        )
        seen.cancels = sim.seed_orders(count=CANCELS, service=REFILL_CANCEL, pending_s=10**6)
        [seen.no_cancel] = sim.seed_orders(service=REFILL_ONLY, pending_s=10**6)
        seen.dropped_single = singles.seed_orders(
            count=3, service=REFILL_CANCEL, outcome="Completed", age_s=LONG_AGO
        )
        [seen.scheduled] = singles.seed_orders(
            service=REFILL_ONLY, outcome="Completed", age_s=LONG_AGO
        )
        bulk, no_drop, plain, closed = seen.bulk, seen.no_drop, seen.plain, seen.closed
        cancels, no_cancel, dropped_single = seen.cancels, seen.no_cancel, seen.dropped_single
        done = ("Completed",)

        shop = shop_client(broker_url)
        procs = {
            "worker": processes.start_worker(refill_env, logs),
            "beat": processes.start_beat(refill_env, logs),
        }
        try:
            # 1. Catalogs, then tracking, each with its service.
            def catalogs_and_tracking() -> None:
                shop.send_task("tracker.sync_catalogs")
                wait_until(
                    lambda: count(Service) == 15, timeout=20, what="three catalogs synced"
                )
                assert (
                    tracker_cli(
                        [
                            "refill-policy",
                            "single",
                            "--service",
                            str(REFILL_ONLY),
                            "--auto-refill-hours",
                            "0.001",
                        ]
                    )
                    == 0
                )
                # Completes about 1 s from now: its first refill attempt is too early.
                [seen.early] = sim.seed_orders(
                    service=REFILL_CANCEL_2, outcome="Completed", pending_s=0, progress_s=10
                )
                # Seen Pending first, so the tracker learns its quantity; the probe finds its drop.
                [seen.probed] = sim.seed_orders(
                    service=REFILL_CANCEL,
                    outcome="Completed",
                    pending_s=30,
                    progress_s=10,
                    start_count=1000,
                )
                for provider, ids, service in (
                    ("main", bulk + [closed, seen.probed] + cancels, REFILL_CANCEL),
                    ("main", [no_drop, no_cancel], REFILL_ONLY),
                    ("main", [plain], PLAIN),
                    ("main", [seen.early], REFILL_CANCEL_2),
                    ("expired", [closed], REFILL_CANCEL),
                    ("single", dropped_single, REFILL_CANCEL),
                    ("single", [seen.scheduled], REFILL_ONLY),
                ):
                    shop.send_task(
                        "tracker.track_orders",
                        args=[provider, ids],
                        kwargs={"service": service},
                    )
                wait_until(
                    lambda: (
                        all_have_status(
                            "main", [*bulk, no_drop, plain, closed, seen.early], done
                        )
                        and all_have_status("expired", [closed], done)
                        and all_have_status("single", dropped_single, done)
                    ),
                    timeout=30,
                    what="the finished orders seen Completed",
                )

            seen.step("1. catalogs and tracking", catalogs_and_tracking)

            # 2. Cancel: the 105 cancellable orders go out as 100 + 5; the rest are refused.
            def cancel() -> None:
                seen.cancel_code, out, _ = _cli(
                    ["cancel", "main", *map(str, cancels), str(no_cancel), str(closed), "424242", "--json"]
                )
                seen.cancel_lines = {line["order_id"]: line for line in json.loads(out)}

            seen.step("2. cancel", cancel)

            # 3. Drops nobody can refill: recorded, refused with the reason, no request.
            def refused_drops() -> None:
                sim.drop(plain, 5)
                code, _, err = _cli(["report-drop", "main", str(plain)])
                seen.refused_drops["plain"] = (code, err)
                code, _, err = _cli(["report-drop", "expired", str(closed)])
                seen.refused_drops["expired"] = (code, err)
                shop.send_task("tracker.report_drop", args=["main", plain])

            seen.step("3. drops nobody can refill", refused_drops)

            # 4. The early order: dropped right after completion, reported by the shop.
            def early_drop() -> None:
                sim.drop(seen.early, 3)
                shop.send_task("tracker.report_drop", args=["main", str(seen.early)])

            seen.step("4. the early drop", early_drop)

            # 5. 120 refills created while beat is stopped, so that all are due together.
            def bulk_drops() -> None:
                procs.pop("beat").stop()
                for order_id in bulk:
                    sim.drop(order_id, 5)
                    shop.send_task("tracker.report_drop", args=["main", order_id])
                shop.send_task("tracker.report_drop", args=["main", no_drop])
                for order_id in dropped_single:
                    singles.drop(order_id, 4)
                    shop.send_task("tracker.report_drop", args=["single", order_id])
                wait_until(
                    lambda: count(RefillRequest, RefillRequest.final.is_(False)) >= BULK + 1 + len(dropped_single),
                    timeout=30,
                    what="the refill requests opened",
                )
                # One dispatcher tick, by hand: its budget (200 req/s) covers every request.
                shop.send_task("tracker.dispatch_polls")
                wait_until(
                    lambda: len(refill_statuses("main", bulk)) == BULK,
                    timeout=30,
                    what="120 refills accepted",
                )
                procs["beat"] = processes.start_beat(refill_env, logs, name="beat2")

            seen.step("5. 120 refills due together", bulk_drops)

            # 6. The probed order: it drops once complete, and nobody reports it.
            def probed_drop() -> None:
                wait_until(
                    lambda: all_have_status("main", [seen.probed], done),
                    timeout=30,
                    what="probed order complete",
                )
                sim.drop(seen.probed, 6)

            seen.step("6. the probed drop", probed_drop)

            seen.step("every refill final and every cancel seen", lambda: wait_until(
                lambda: (
                    refills_final("main", [*bulk, no_drop, seen.early, seen.probed])
                    and refills_final("single", dropped_single)
                    and refills_final("single", [seen.scheduled], at_least=1)
                    and all_have_status("main", cancels, ("Canceled",))
                ),
                timeout=45,
                what="every refill final and every cancel seen",
            ))
        finally:
            for proc in procs.values():
                proc.stop()
        seen.stats = sim.stats()["actions"]
        seen.single_stats = singles.stats()["actions"]
        seen.refill_truth = sim.refill_truth(range(1, sim.stats()["refills"] + 1))


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_drops_reported_by_the_shop_are_refilled_once_and_polled_to_completed(e2e: EndToEnd) -> None:
    for order_id in [*e2e.bulk, e2e.early, e2e.probed]:
        view = detail("main", order_id)
        assert [r["status"] for r in view["refills"]] == ["Completed"], (
            order_id,
            view["refill_requests"],
        )
        [request] = view["refill_requests"]
        assert (
            request["state"] == "accepted"
            and request["refill_id"] == view["refills"][0]["refill_id"]
        )
        truth = e2e.refill_truth[int(view["refills"][0]["refill_id"])]
        assert truth is not None and truth["order"] == order_id
        assert refill_history_matches(view["refills"][0], truth), (
            view["refills"][0],
            truth["timeline"],
        )
    bulk_view = detail("main", e2e.bulk[0])
    assert (
        bulk_view["drops"][0]["source"] == "shop"
        and bulk_view["drops"][0]["eligible"] is True
    )
    assert [a["outcome"] for a in bulk_view["refill_requests"][0]["attempts"]] == [
        "accepted"
    ]


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_a_refill_of_an_order_that_did_not_drop_is_rejected(e2e: EndToEnd) -> None:
    assert [r["status"] for r in detail("main", e2e.no_drop)["refills"]] == ["Rejected"]


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_too_early_is_retried_with_back_off_until_accepted(e2e: EndToEnd) -> None:
    outcomes = [
        a["outcome"] for a in detail("main", e2e.early)["refill_requests"][0]["attempts"]
    ]
    assert outcomes[0] == "retry_later" and outcomes[-1] == "accepted", outcomes
    assert set(outcomes[:-1]) == {"retry_later"}
    assert (
        "Too early"
        in detail("main", e2e.early)["refill_requests"][0]["attempts"][0]["message"]
    )


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_the_count_probe_finds_a_drop_nobody_reported(e2e: EndToEnd) -> None:
    # Counted, compared with start + quantity, refilled (the refill: the first test).
    probe_drop = detail("main", e2e.probed)["drops"][0]
    assert probe_drop["source"] == "probe"
    assert probe_drop["expected_count"] - probe_drop["observed_count"] == 6


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_no_refill_request_without_refill_or_outside_the_window(e2e: EndToEnd) -> None:
    assert e2e.refused_drops, f"the scenario stopped before step 3: {e2e.failed}"
    code, err = e2e.refused_drops["plain"]
    assert code == 1 and "has no refill" in err
    code, err = e2e.refused_drops["expired"]
    assert code == 1 and "guarantee window (0 days" in err
    for provider, order_id, reason in (
        ("main", e2e.plain, "has no refill"),
        ("expired", e2e.closed, "window"),
    ):
        view = detail(provider, order_id)
        assert view["drops"] and all(
            not d["eligible"] and reason in d["reason"] for d in view["drops"]
        )
        assert view["refill_requests"] == [] and view["refills"] == []
    with unit_of_work() as session:
        services_with_requests = set(
            session.scalars(
                select(Order.service_id).join(
                    RefillRequest, RefillRequest.order_id == Order.id
                )
            )
        )
    assert PLAIN not in services_with_requests


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_refill_status_calls_carry_at_most_100_ids_and_singles_are_learned(e2e: EndToEnd) -> None:
    # The 120 refills due together went as 100 + 20.
    assert e2e.stats["refill_status"]["max_ids"] == 100
    assert e2e.stats["refill_status"]["rejected_over_100"] == 0
    # The singles panel refused the multi form once; from then on single calls only.
    with unit_of_work() as session:
        assert (
            session.scalar(
                select(Provider.supports_multi_refill_status).where(
                    Provider.name == "single"
                )
            )
            is False
        )
        assert (
            session.scalar(
                select(Provider.supports_multi_refill_status).where(
                    Provider.name == "main"
                )
            )
            is True
        )
    assert e2e.single_stats["refill_status"]["calls"] >= len(e2e.dropped_single) + 1


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_the_scheduled_policy_requests_refills_by_itself(e2e: EndToEnd) -> None:
    scheduled_view = detail("single", e2e.scheduled)
    assert scheduled_view["drops"] == []
    assert {r["trigger"] for r in scheduled_view["refill_requests"]} == {"schedule"}


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_cancels_go_in_calls_of_at_most_100_with_refusals_and_reasons(e2e: EndToEnd) -> None:
    assert e2e.cancel_lines, f"the scenario stopped before step 2: {e2e.failed}"
    assert e2e.cancel_code == 1
    # 105 accepted in calls of at most 100, refusals with reasons, Canceled by polling.
    assert e2e.stats["cancel"]["max_ids"] == 100 and e2e.stats["cancel"]["calls"] == 2
    assert all(
        e2e.cancel_lines[str(order_id)]["outcome"] == "accepted" for order_id in e2e.cancels
    )
    assert "does not allow cancel" in e2e.cancel_lines[str(e2e.no_cancel)]["reason"]
    assert "already final" in e2e.cancel_lines[str(e2e.closed)]["reason"]
    assert "not tracked" in e2e.cancel_lines["424242"]["reason"]
    assert count(CancelRequest, CancelRequest.outcome == "accepted") == CANCELS
    assert detail("main", e2e.no_cancel)["cancel_requests"][0]["outcome"] == "refused"
    assert detail("main", e2e.cancels[0])["events"][-1]["to_status"] == "Canceled"


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_order_json_shows_the_refill_history_and_the_request(
    e2e: EndToEnd, capsys: pytest.CaptureFixture[str]
) -> None:
    assert e2e.early, f"the scenario stopped before the early order: {e2e.failed}"
    capsys.readouterr()
    assert tracker_cli(["order", "main", str(e2e.early), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (
        shown["refills"][0]["status"] == "Completed" and shown["refills"][0]["events"]
    )
    assert shown["refill_requests"][0]["attempts"][-1]["outcome"] == "accepted"


@pytest.mark.slow  # the shared scenario takes about 20 s per database
def test_the_scenario_ran_every_step(e2e: EndToEnd) -> None:
    e2e.require()


def _print_end_to_end_figures(seen: EndToEnd) -> None:
    if not seen.stats:
        return
    stats, single_stats = seen.stats, seen.single_stats
    with unit_of_work() as session:
        final_refills = dict(
            session.execute(
                select(Refill.status, func.count())
                .where(Refill.final.is_(True))
                .group_by(Refill.status)
            ).all()
        )
    print_figures(
        f"refills {seen.database}",
        {
            "drops": count(Drop),
            "eligible_drops": count(Drop, Drop.eligible.is_(True)),
            "refill_requests": count(RefillRequest),
            "requests_sent": count(RefillAttempt),
            "requests_accepted": count(
                RefillAttempt, RefillAttempt.outcome == "accepted"
            ),
            "refills_final": sum(final_refills.values()),
            **{
                f"final_{status}": number
                for status, number in sorted(final_refills.items())
            },
            "refill_status_calls": stats["refill_status"]["calls"]
            + single_stats["refill_status"]["calls"],
            "refill_status_max_ids": stats["refill_status"]["max_ids"],
            "cancel_calls": stats["cancel"]["calls"],
        },
    )


# --- single attempts, one step at a time ----------------------------------------------------


@pytest.fixture
def stepper(tracker_env: dict[str, str]) -> Iterator[tuple[SimServer, Gateway]]:
    with simulated("standard", 41) as sim:
        with unit_of_work() as session:
            spec = ProviderSpec(
                name="panel", url=sim.url, api_key=TEST_API_KEY, rate_limit=1000
            )
            upsert_provider(session, spec, get_settings(), utcnow())
        gateway = Gateway(get_settings(), rate_limiter=None)
        from tracker.providers.catalog import sync_due_catalogs

        assert sync_due_catalogs(get_settings(), gateway, utcnow())[0].services == 5
        yield sim, gateway
        gateway.close()


def completed(
    sim: SimServer,
    gateway: Gateway,
    service: int,
    *,
    tracked_as: int | None = None,
    **seed: Any,
) -> int:
    """Seed one order, track it (as ``tracked_as`` when given) and poll it to Completed."""
    [order_id] = sim.seed_orders(service=service, outcome="Completed", **seed)
    with unit_of_work() as session:
        track_orders(
            session, "panel", [order_id], service=tracked_as or service, now=utcnow()
        )
    for batch in order_polls(get_settings(), utcnow()):
        poll_orders(
            batch.provider_id,
            batch.claim.claim_id,
            batch.claim.row_ids,
            settings=get_settings(),
            gateway=gateway,
        )
    assert detail("panel", order_id)["status"] == "Completed"
    return order_id


def drop_and_claim(order_id: int, settings: Settings) -> tuple[int, int]:
    with unit_of_work() as session:
        report = report_drop(session, "panel", order_id, settings=settings, now=utcnow())
    assert report.request_id is not None
    [claimed] = refill_attempts(settings, utcnow())
    assert claimed.request_id == report.request_id
    return claimed.request_id, claimed.claim_id


def attempt(
    request_id: int, claim_id: int, gateway: Gateway, settings: Settings
) -> AttemptReport:
    return attempt_refill(request_id, claim_id, settings=settings, gateway=gateway)


def test_a_lost_answer_ends_the_request_and_is_never_sent_again(
    stepper: tuple[SimServer, Gateway],
) -> None:
    sim, gateway = stepper
    settings = replace(get_settings(), refill_retry_base=0.1, refill_retry_cap=0.2)
    order_id = completed(sim, gateway, REFILL_CANCEL, age_s=LONG_AGO)
    sim.drop(order_id, 5)
    request_id, claim_id = drop_and_claim(order_id, settings)
    # The provider creates the refill, and its answer is cut in half on the way back.
    sim.inject_fault("broken_json", count=1, actions=["refill"])
    first = attempt(request_id, claim_id, gateway, settings)
    assert (first.outcome, first.state, first.retry_in) == ("no_answer", "gave_up", None)
    # Nothing is due again, however long we wait: the call is never repeated.
    assert refill_attempts(settings, utcnow() + timedelta(days=3)) == []
    assert attempt(request_id, claim_id, gateway, settings).outcome == "skipped"
    view = detail("panel", order_id)
    [request] = view["refill_requests"]
    assert [a["outcome"] for a in request["attempts"]] == ["no_answer"]
    assert request["state"] == "gave_up" and request["answer"] == "unknown"
    assert "answer unknown" in request["last_message"]
    assert sim.stats()["actions"]["refill"]["calls"] == 1
    assert sim.stats()["refills"] == 1
    # The refill may be running unseen: a report inside its cool-down is the same drop.
    with unit_of_work() as session:
        again = report_drop(session, "panel", order_id, settings=settings, now=utcnow())
    assert again.eligible and again.request_id is None and "cool-down" in (again.reason or "")
    assert refill_attempts(settings, utcnow() + timedelta(hours=24, seconds=1)) == []
    # Once the cool-down has ended, a report is a new drop, due at once.
    after = utcnow() + timedelta(hours=24, seconds=1)
    with unit_of_work() as session:
        later = report_drop(session, "panel", order_id, settings=settings, now=after)
    assert later.request_id is not None and later.reason is None
    assert len(refill_attempts(settings, after)) == 1


def test_a_long_wait_lives_in_the_database_until_the_dispatcher_picks_it_up(
    stepper: tuple[SimServer, Gateway],
) -> None:
    sim, gateway = stepper
    settings = replace(get_settings(), refill_retry_base=300, refill_retry_cap=600)
    order_id = completed(
        sim, gateway, REFILL_CANCEL, pending_s=0, progress_s=1, age_s=2
    )
    sim.drop(order_id, 2)
    request_id, claim_id = drop_and_claim(order_id, settings)
    report = attempt(request_id, claim_id, gateway, settings)
    assert (report.outcome, report.state, report.retry_in) == (
        "retry_later",
        "pending",
        None,
    )
    with unit_of_work() as session:
        request = session.get_one(RefillRequest, request_id)
        assert request.claim_id is None and request.next_attempt_at is not None
        wait = (request.next_attempt_at - utcnow()).total_seconds()
    assert 100 <= wait <= 300
    assert refill_attempts(settings, utcnow()) == []
    [due] = refill_attempts(settings, utcnow() + timedelta(seconds=301))
    assert due.request_id == request_id


def test_refill_disabled_marks_the_order_and_ends_the_request(
    stepper: tuple[SimServer, Gateway],
) -> None:
    sim, gateway = stepper
    # The shop said "service 1" (refill in the catalog); the panel knows it has none.
    order_id = completed(sim, gateway, PLAIN, tracked_as=REFILL_CANCEL, age_s=LONG_AGO)
    request_id, claim_id = drop_and_claim(order_id, get_settings())
    report = attempt(request_id, claim_id, gateway, get_settings())
    assert (report.outcome, report.state) == ("disabled", "gave_up")
    assert detail("panel", order_id)["refillable"] is False
    with unit_of_work() as session:
        again = report_drop(session, "panel", order_id, settings=get_settings(), now=utcnow())
    assert (
        not again.eligible and again.reason is not None and "disabled" in again.reason
    )
    assert count(RefillRequest) == 1


def test_the_attempt_cap_ends_the_retries(stepper: tuple[SimServer, Gateway]) -> None:
    sim, gateway = stepper
    settings = replace(
        get_settings(),
        refill_max_attempts=2,
        refill_retry_base=0.1,
        refill_retry_cap=0.1,
    )
    order_id = completed(
        sim, gateway, REFILL_CANCEL, pending_s=0, progress_s=1, age_s=2
    )
    request_id, claim_id = drop_and_claim(order_id, settings)
    assert attempt(request_id, claim_id, gateway, settings).state == "pending"
    final = attempt(request_id, claim_id, gateway, settings)
    assert (final.outcome, final.state) == ("retry_later", "gave_up")
    [request] = detail("panel", order_id)["refill_requests"]
    assert "2 attempts" in request["last_message"] and len(request["attempts"]) == 2
    # A task delivered after the request ended does nothing.
    assert attempt(request_id, claim_id, gateway, settings).outcome == "skipped"

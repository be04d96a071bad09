"""`tracker demo`: the whole tracker at work in about a minute, on a fresh machine.

Three simulated providers (one per API v2 dialect family) run in this process. The
tracker runs as it does in production: its own SQLite database in a work directory, the
bundled Redis (unless TRACKER_BROKER_URL is set), and real Celery worker and beat
processes. The demo plays the shop: it registers the providers, has the worker sync
their catalogs, seeds a few hundred orders in the sims, enqueues them with
``tracker.track_orders``, reports a couple of drops with ``tracker.report_drop``, and
watches the database and the sims until everything is final.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery
from cryptography.fernet import Fernet
from rich.console import Console
from rich.live import Live
from sqlalchemy import func, select

from tracker.core.clock import utcnow
from tracker.config import Settings
from tracker.db import migrate
from tracker.db.models import Drop, Order, OrderEvent, Refill, RefillEvent, RefillRequest, Service
from tracker.db.session import dispose_engines, unit_of_work
from tracker.ops.demo_view import NOT_POLLED, DemoSnapshot, ProviderView, live_table, plain_line, summary_text
from tracker.ops.runner import Child, beat_command, first_exited, spawn, start_broker, stop_children, worker_command
from tracker.sim.catalog import SERVICE_FOLLOWERS_REFILL_CANCEL, SERVICE_LIKES_PLAIN, SERVICE_VIEWS_REFILL
from tracker.sim.server import SimServer
from tracker.providers.registry import ProviderSpec, upsert_provider
from tracker.redis_clients import broker_transport_options

DIALECTS = ("standard", "singles", "promobox")
# (service, share of the orders): two services with refill, one without.
SERVICE_MIX = ((SERVICE_FOLLOWERS_REFILL_CANCEL, 0.4), (SERVICE_VIEWS_REFILL, 0.25), (SERVICE_LIKES_PLAIN, 0.35))
REFILL_SERVICES = (SERVICE_FOLLOWERS_REFILL_CANCEL, SERVICE_VIEWS_REFILL)
DROPS_PER_PROVIDER = 2
DROP_AMOUNT = 20
# Sim seconds a refill stays Pending, then In progress.
REFILL_PENDING_S = 10.0
REFILL_PROGRESS_S = 30.0
PLAIN_LINE_EVERY = 2.0
REFRESH_EVERY = 0.5
CATALOG_RETRY_EVERY = 15.0
STARTUP_TIMEOUT = 60.0
# What a Celery worker logs once it consumes tasks.
WORKER_READY = b" ready."
# The user's settings the demo keeps: which broker, and how to reach it through Sentinel.
BROKER_SETTINGS = frozenset({"TRACKER_BROKER_URL", "TRACKER_SENTINEL_MASTER", "TRACKER_SENTINEL_PASSWORD"})
# The demo's pace: a poll per order every 1-2 s, short leases, refill retries within 2 s.
DEMO_SETTINGS = {
    "TRACKER_MODE": "local",
    "TRACKER_POLL_INTERVAL": "1",
    "TRACKER_TICK_INTERVAL": "1",
    "TRACKER_MAX_POLL_BACKOFF": "2",
    "TRACKER_LEASE_SECONDS": "10",
    "TRACKER_REFILL_RETRY_BASE": "1",
    "TRACKER_REFILL_RETRY_CAP": "2",
}


class DemoError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class DemoOptions:
    seconds: float = 110.0
    live: bool = True
    speed: float = 15.0
    orders_per_provider: int = 100
    directory: Path | None = None


@dataclass(slots=True)
class DemoProvider:
    name: str
    sim: SimServer
    order_ids: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    provider_id: int = 0


def demo_environment(workdir: Path, inherited: Mapping[str, str]) -> dict[str, str]:
    """The children's environment: the user's own TRACKER_* settings (a production
    database, webhooks) must not leak into the demo; only the broker may be chosen."""
    environment = {
        name: value for name, value in inherited.items() if not name.startswith("TRACKER_") or name in BROKER_SETTINGS
    }
    environment.update(DEMO_SETTINGS)
    environment["TRACKER_DATABASE_URL"] = f"sqlite:///{workdir / 'demo.db'}"
    environment["TRACKER_STATE_DIR"] = str(workdir / "state")
    environment["TRACKER_SECRET_KEY"] = Fernet.generate_key().decode()
    return environment


def service_plan(total: int) -> list[tuple[int, int]]:
    """(service, count) pairs summing to ``total``, in the shares of SERVICE_MIX."""
    plan = [(service, int(total * share)) for service, share in SERVICE_MIX]
    first_service, first_count = plan[0]
    plan[0] = (first_service, first_count + total - sum(count for _, count in plan))
    return [(service, count) for service, count in plan if count > 0]


# --- reading the tracker's state ---------------------------------------------------------------


def collect(url: str, providers: Sequence[DemoProvider], elapsed: float) -> DemoSnapshot:
    orders: dict[int, Counter[str]] = defaultdict(Counter)
    final_orders: dict[int, Counter[str]] = defaultdict(Counter)
    refills: dict[int, Counter[str]] = defaultdict(Counter)
    refills_final: Counter[int] = Counter()
    with unit_of_work(url, read_only=True) as session:
        for provider_id, status, final, count in session.execute(
            select(Order.provider_id, Order.status, Order.final, func.count()).group_by(
                Order.provider_id, Order.status, Order.final
            )
        ):
            orders[provider_id][status or NOT_POLLED] += count
            if final:
                final_orders[provider_id][status or NOT_POLLED] += count
        for provider_id, status, final, count in session.execute(
            select(Refill.provider_id, Refill.status, Refill.final, func.count()).group_by(
                Refill.provider_id, Refill.status, Refill.final
            )
        ):
            refills[provider_id][status or NOT_POLLED] += count
            if final:
                refills_final[provider_id] += count
        drops = dict(
            session.execute(
                select(Order.provider_id, func.count(Drop.id)).join(Order, Order.id == Drop.order_id).group_by(Order.provider_id)
            ).all()
        )
        requests = dict(
            session.execute(select(RefillRequest.provider_id, func.count()).group_by(RefillRequest.provider_id)).all()
        )
        order_events = int(session.scalar(select(func.count()).select_from(OrderEvent)) or 0)
        refill_events = int(session.scalar(select(func.count()).select_from(RefillEvent)) or 0)
    views = []
    for provider in providers:
        key = provider.provider_id
        actions = provider.sim.stats()["actions"]
        status = actions.get("status", {})
        views.append(
            ProviderView(
                name=provider.name,
                orders=sum(orders[key].values()),
                final=sum(final_orders[key].values()),
                by_status=dict(orders[key]),
                final_by_status=dict(final_orders[key]),
                drops=int(drops.get(key, 0)),
                refill_requests=int(requests.get(key, 0)),
                refills_accepted=sum(refills[key].values()),
                refills_final=refills_final[key],
                refills_by_status=dict(refills[key]),
                calls_by_action={action: int(counters["calls"]) for action, counters in actions.items()},
                status_calls=int(status.get("calls", 0)),
                status_ids=int(status.get("ids_total", 0)),
            )
        )
    return DemoSnapshot(elapsed, tuple(views), order_events, refill_events)


def pending_refill_work(url: str) -> int:
    """Refill requests still being retried plus refills not final yet."""
    with unit_of_work(url, read_only=True) as session:
        requests = session.scalar(select(func.count()).select_from(RefillRequest).where(RefillRequest.final.is_(False)))
        refills = session.scalar(select(func.count()).select_from(Refill).where(Refill.final.is_(False)))
    return int(requests or 0) + int(refills or 0)


def drop_candidates(url: str, provider: DemoProvider, wanted: int) -> list[int]:
    """Orders of refill services the tracker has seen Completed, not dropped yet."""
    with unit_of_work(url, read_only=True) as session:
        return list(
            session.scalars(
                select(Order.external_id)
                .where(
                    Order.provider_id == provider.provider_id,
                    Order.status == "Completed",
                    Order.service_id.in_(REFILL_SERVICES),
                    Order.external_id.not_in(provider.dropped),
                )
                .order_by(Order.external_id)
                .limit(wanted)
            )
        )


# --- the demo ------------------------------------------------------------------------------------


class Demo:
    def __init__(self, options: DemoOptions, workdir: Path, environment: dict[str, str]) -> None:
        self.options = options
        self.workdir = workdir
        self.environment = environment
        self.settings = Settings.from_env(environment)
        self.url = self.settings.database_url
        self.api_key = secrets.token_urlsafe(24)
        self.providers: list[DemoProvider] = []
        self.children: list[Child] = []
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check_children(self) -> None:
        dead = first_exited(self.children)
        if dead is not None:
            raise DemoError(
                f"the {dead.name} exited with code {dead.process.returncode}; see {self.workdir / (dead.name + '.log')}"
            )

    def start_tracker(self, stack: ExitStack, say: Callable[[str], None]) -> Celery:
        state_dir = Path(self.settings.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(self.url)
        stack.callback(dispose_engines)
        bundled = start_broker(self.settings, state_dir)
        if bundled is not None:
            stack.callback(bundled.stop)
            self.environment["TRACKER_BROKER_URL"] = bundled.url
        broker = self.environment["TRACKER_BROKER_URL"]
        stack.callback(stop_children, self.children)
        self.children.append(spawn("worker", worker_command("INFO"), self.environment, self.workdir / "worker.log"))
        self.children.append(
            spawn("beat", beat_command("INFO", state_dir), self.environment, self.workdir / "beat.log")
        )
        say(f"tracker: worker and beat started, broker {'bundled Redis' if bundled else 'TRACKER_BROKER_URL'}")
        shop = Celery("tracker-demo-shop", broker=broker)
        shop.conf.broker_transport_options = broker_transport_options(self.settings)
        stack.callback(shop.close)
        return shop

    def start_sims(self, stack: ExitStack) -> None:
        for number, dialect in enumerate(DIALECTS, start=1):
            sim = SimServer(
                dialect=dialect,
                speed=self.options.speed,
                seed=100 + number,
                api_key=self.api_key,
                natural_drops=False,
                refill_pending_s=REFILL_PENDING_S,
                refill_progress_s=REFILL_PROGRESS_S,
            )
            stack.enter_context(sim)
            self.providers.append(DemoProvider(dialect, sim))

    def register_providers(self) -> None:
        with unit_of_work(self.url) as session:
            for provider in self.providers:
                spec = ProviderSpec(name=provider.name, url=provider.sim.url, api_key=self.api_key, rate_limit=20)
                registered, _ = upsert_provider(session, spec, self.settings, utcnow())
                session.flush()
                provider.provider_id = registered.id

    def wait_for_worker(self) -> None:
        log = self.workdir / "worker.log"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while WORKER_READY not in log.read_bytes():
            self.check_children()
            if time.monotonic() > deadline:
                raise DemoError(f"the worker did not start in {STARTUP_TIMEOUT:.0f} s; see {log}")
            time.sleep(0.2)

    def sync_catalogs(self, shop: Celery, say: Callable[[str], None]) -> None:
        """By the worker, as beat would. Sent once the worker is up: two sync tasks
        running at once would both fetch every catalog. A sync that skipped a provider
        (its rate limit was busy) is sent again later."""
        self.wait_for_worker()
        expected = sum(len(provider.sim.provider.services) for provider in self.providers)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            shop.send_task("tracker.sync_catalogs")
            retry_at = time.monotonic() + CATALOG_RETRY_EVERY
            while time.monotonic() < retry_at:
                self.check_children()
                with unit_of_work(self.url, read_only=True) as session:
                    synced = int(session.scalar(select(func.count()).select_from(Service)) or 0)
                if synced >= expected:
                    say(f"catalogs synced: {synced} services from {len(self.providers)} providers")
                    return
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the worker did not sync the catalogs in {STARTUP_TIMEOUT:.0f} s; see {self.workdir / 'worker.log'}"
                    )
                time.sleep(0.2)

    def seed_and_track(self, shop: Celery, say: Callable[[str], None]) -> None:
        for provider in self.providers:
            for service, count in service_plan(self.options.orders_per_provider):
                ids = provider.sim.seed_orders(count=count, service=service)
                provider.order_ids.extend(ids)
                shop.send_task("tracker.track_orders", args=[provider.name, ids], kwargs={"service": service})
        say(
            f"seeded and enqueued {sum(len(p.order_ids) for p in self.providers)} orders "
            f"({self.options.orders_per_provider} per provider, sim speed {self.options.speed:g}x)"
        )

    def report_drops(self, shop: Celery) -> None:
        """Drop a couple of completed refill-service orders in each sim and tell the
        tracker, as a shop would."""
        for provider in self.providers:
            wanted = DROPS_PER_PROVIDER - len(provider.dropped)
            if wanted <= 0:
                continue
            for order_id in drop_candidates(self.url, provider, wanted):
                try:
                    provider.sim.drop(order_id, DROP_AMOUNT)
                except ValueError:
                    continue
                provider.dropped.append(order_id)
                shop.send_task("tracker.report_drop", args=[provider.name, order_id])

    def finished(self, snapshot: DemoSnapshot) -> bool:
        """Every order final, every drop reported so far recorded, every refill over.
        Drops are reported after the snapshot, so once it shows every order final no
        Completed order is left that could still be dropped."""
        return (
            snapshot.orders == sum(len(provider.order_ids) for provider in self.providers)
            and snapshot.final == snapshot.orders
            and snapshot.total("drops") == sum(len(provider.dropped) for provider in self.providers)
            and pending_refill_work(self.url) == 0
        )

    def watch(self, shop: Celery, show: Callable[[DemoSnapshot], None]) -> tuple[DemoSnapshot, bool]:
        """Until everything is final or time is up. Ctrl-C ends the watch, not the demo:
        the summary still prints."""
        deadline = self.started + self.options.seconds
        snapshot = collect(self.url, self.providers, self.elapsed)
        try:
            while True:
                self.check_children()
                snapshot = collect(self.url, self.providers, self.elapsed)
                show(snapshot)
                self.report_drops(shop)
                if self.finished(snapshot):
                    return snapshot, True
                if time.monotonic() >= deadline:
                    return snapshot, False
                time.sleep(REFRESH_EVERY)
        except KeyboardInterrupt:
            return snapshot, False


@contextmanager
def _display(live: bool, console: Console) -> Iterator[Callable[[DemoSnapshot], None]]:
    if live:
        with Live(console=console, auto_refresh=False, transient=False) as screen:

            def show_live(snapshot: DemoSnapshot) -> None:
                screen.update(live_table(snapshot), refresh=True)

            yield show_live
        return
    last_line = 0.0

    def show_plain(snapshot: DemoSnapshot) -> None:
        nonlocal last_line
        if snapshot.elapsed - last_line >= PLAIN_LINE_EVERY:
            last_line = snapshot.elapsed
            print(plain_line(snapshot), flush=True)

    yield show_plain


def run_demo(options: DemoOptions) -> int:
    console = Console()
    live = options.live and console.is_terminal
    keep = options.directory is not None
    workdir = (options.directory or Path(tempfile.mkdtemp(prefix="tracker-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(options, workdir, demo_environment(workdir, os.environ))

    def say(text: str) -> None:
        print(f"[{demo.elapsed:5.1f}s] {text}", flush=True)

    say(f"tracker demo: {len(DIALECTS)} simulated providers ({', '.join(DIALECTS)}); work directory {workdir}")
    failed = False
    try:
        with ExitStack() as stack:
            shop = demo.start_tracker(stack, say)
            demo.start_sims(stack)
            demo.register_providers()
            demo.sync_catalogs(shop, say)
            demo.seed_and_track(shop, say)
            with _display(live, console) as show:
                _, finished = demo.watch(shop, show)
            # Workers stop first, so the sims' counters are complete when read.
            stop_children(demo.children)
            snapshot = collect(demo.url, demo.providers, demo.elapsed)
        print(summary_text(snapshot, finished=finished), flush=True)
        return 0
    except DemoError as error:
        failed = True
        print(f"tracker demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if not keep and not failed:
            shutil.rmtree(workdir, ignore_errors=True)

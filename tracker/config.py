"""Settings, read from the environment once per process.

Every variable is documented in docs/configuration.md; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///tracker.db"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"
# The name Sentinel's own sample configuration gives the master it watches.
DEFAULT_SENTINEL_MASTER = "mymaster"
# After the broker's Redis changed (a failover), provider calls wait this long (plus one
# call's spacing) before the rate limiter hands out slots again: see
# tracker.providers.ratelimit. Also the longest a call waits for its slot.
DEFAULT_FAILOVER_PAUSE = 10.0
# `tracker run` writes its bundled Redis' URL here (in the state dir) while it runs, so
# the other commands of a local install (`tracker stats`, a second `celery -A tracker
# worker`) find the broker without TRACKER_BROKER_URL.
BROKER_URL_FILE = "broker-url"


class ConfigError(ValueError):
    """A setting has a value the tracker cannot use. The message names the variable."""


def broker_url_file(state_dir: Path) -> Path:
    return state_dir / BROKER_URL_FILE


def read_broker_url_file(state_dir: Path) -> str | None:
    try:
        return broker_url_file(state_dir).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


# Plain URLs name the driver the project installs for their database, per the contract.
# MariaDB goes through the MySQL dialect, which recognises the server by its version.
_DRIVER_PREFIXES = {
    "postgresql://": "postgresql+psycopg://",
    "postgres://": "postgresql+psycopg://",
    "mysql://": "mysql+pymysql://",
    "mariadb://": "mysql+pymysql://",
    "mariadb+pymysql://": "mysql+pymysql://",
}
# The MySQL/MariaDB drivers the project installs (pyproject's dependencies).
MYSQL_DRIVERS = ("pymysql",)


def normalize_database_url(url: str) -> str:
    """A plain ``postgresql://`` (or ``postgres://``) URL means psycopg 3, and a plain
    ``mysql://`` or ``mariadb://`` URL means PyMySQL."""
    for prefix, replacement in _DRIVER_PREFIXES.items():
        if url.startswith(prefix):
            return replacement + url[len(prefix) :]
    return url


def is_mysql_url(url: str) -> bool:
    return normalize_database_url(url).startswith(("mysql+", "mariadb+"))


def _check_database_url(url: str) -> None:
    scheme = url.split("://", 1)[0]
    backend, _, driver = scheme.partition("+")
    if backend in ("mysql", "mariadb") and driver not in MYSQL_DRIVERS:
        raise ConfigError(
            f"TRACKER_DATABASE_URL names the MySQL driver {driver!r}, which the tracker does not "
            f"install; use mysql+pymysql://user:password@host:3306/database (or plain mysql://)"
        )


def _number(env: dict[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _optional_number(env: dict[str, str], name: str, *, minimum: float) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return _number(env, name, 0.0, minimum=minimum)


def _integer(env: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    value = _number(env, name, default, minimum=minimum)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {env.get(name)!r}")
    return int(value)


def _optional_integer(env: dict[str, str], name: str, *, minimum: int) -> int | None:
    if env.get(name, "").strip() == "":
        return None
    return _integer(env, name, 0, minimum=minimum)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(env: dict[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{name} must be 1 or 0 (true/false, yes/no), got {env.get(name)!r}")
    return value in _TRUE


# A poll task's calls run one after another: more would hold a task (and its lease) long.
MAX_CALLS_PER_POLL_TASK = 50


def default_worker_concurrency() -> int:
    """Prefork children: one per core this process may run on (a container's CPU set,
    not the host's), plus one kept free for control tasks."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores + 1


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    # None means "not configured": `tracker run` then starts its bundled Redis.
    broker_url_setting: str | None = None
    poll_interval: float = 300.0
    tick_interval: float = 5.0
    # Adaptive polling never stretches one order's interval beyond this many base intervals.
    max_poll_backoff_factor: float = 8.0
    not_found_after: int = 5
    lease_seconds: float = 180.0
    # Pool children per worker: one per core for provider calls, plus one kept free for
    # control tasks (see tracker.worker.queues).
    worker_concurrency: int = field(default_factory=lambda: default_worker_concurrency())
    # Worker processes `tracker run` starts. One process runs Python on one core at a
    # time; a second one uses a second core (see docs/performance.md).
    worker_processes: int = 1
    # Status calls one poll task makes, in turn, on rows it reads and writes together:
    # one task, one read and one write per up to this many 100-ID calls.
    calls_per_poll_task: int = 10
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 30.0
    # One whole call, connect to the last byte, and the largest answer read.
    http_deadline: float = 45.0
    # Celery's time limits for every task: at the soft one the task stops and writes what
    # it has; at the hard one the pool child is killed and replaced. A poll task starts
    # no call that might outlast the soft limit (tracker.polling.engine).
    task_soft_time_limit: float = 100.0
    task_time_limit: float = 120.0
    http_max_body_bytes: int = 8 * 1024 * 1024
    circuit_failure_threshold: int = 5
    # Refill requests: attempts before giving up, and the back-off between them
    # (exponential from base, jittered, capped).
    refill_max_attempts: int = 12
    refill_retry_base: float = 300.0
    refill_retry_cap: float = 21600.0
    # After a refill is sent (or its answer lost), no new refill of the same order goes
    # out for this long: most panels allow one refill per order per day.
    refill_cooldown_hours: float = 24.0
    # Scheduled refill policy for providers and services without their own: every N
    # hours inside the guarantee window. None: off.
    auto_refill_hours: float | None = None
    auto_refill_scan_interval: float = 60.0
    # Dotted path of the count probe callable (see tracker.refills.count_probe_plugins). None: no probe.
    count_probe: str | None = None
    count_probe_interval: float = 3600.0
    catalog_sync_interval: float = 86400.0
    # Events to the shop (see tracker.outbox.delivery). No URL and no task: no events.
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_timeout: float = 10.0
    # A failing event is retried until this many seconds after it was recorded (or resent).
    webhook_retry_for: float = 259200.0
    # Deprecated: None, the default, means no limit on attempts inside webhook_retry_for.
    webhook_max_attempts: int | None = None
    event_task: str | None = None
    # The shop's own worker consumes this queue; the tracker's workers never do.
    event_queue: str = "tracker-events"
    balance_check_interval: float = 3600.0
    # A provider paused for a rejected key is probed with one `balance` call after this
    # back-off: base, doubling per rejected probe, capped.
    key_probe_base: float = 60.0
    key_probe_cap: float = 1800.0
    secret_key: str | None = field(default=None, repr=False)
    mode: str = "local"
    # Outside local mode, plain http:// to a provider that is not on loopback is refused
    # (the API key would travel in clear text) unless this is set.
    allow_http_providers: bool = False
    state_dir: Path = Path(".tracker")
    # From <state_dir>/broker-url, read only when TRACKER_BROKER_URL is unset.
    running_broker_url: str | None = None
    # With a sentinel:// broker URL: the master's name, and the Sentinels' own password.
    sentinel_master: str = DEFAULT_SENTINEL_MASTER
    sentinel_password: str | None = field(default=None, repr=False)
    failover_pause: float = DEFAULT_FAILOVER_PAUSE

    @property
    def broker_url(self) -> str:
        return self.broker_url_setting or self.running_broker_url or DEFAULT_BROKER_URL

    @property
    def provider_try_seconds(self) -> float:
        """The longest one try of a provider call can take, request to last byte: the
        deadline, or the connect and read timeouts when they add up to more
        (``tracker.apiv2.client.ProviderClient.attempt_bound`` of the workers' clients)."""
        return max(self.http_deadline, self.http_connect_timeout + self.http_read_timeout)

    @property
    def webhook_connect_timeout(self) -> float:
        return min(self.http_connect_timeout, self.webhook_timeout)

    @property
    def webhook_post_seconds(self) -> float:
        """The longest one delivery may take: connecting, waiting for the shop's answer, and
        a margin for the bookkeeping around it (``tracker.outbox.delivery.post_budget``)."""
        margin = max(1.0, 0.05 * self.lease_seconds)
        if not self.webhook_url:
            return margin
        return self.webhook_connect_timeout + self.webhook_timeout + margin

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def local_mode(self) -> bool:
        return self.mode == "local"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        database_url = normalize_database_url(
            env.get("TRACKER_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
        )
        _check_database_url(database_url)
        mode = env.get("TRACKER_MODE", "").strip().lower()
        if not mode:
            # The embedded default (SQLite) is a local install; anything else is production.
            mode = "local" if database_url.startswith("sqlite") else "production"
        if mode not in ("local", "production"):
            raise ConfigError(f"TRACKER_MODE must be 'local' or 'production', got {mode!r}")
        poll_interval = _number(env, "TRACKER_POLL_INTERVAL", 300.0, minimum=0.1)
        tick_interval = _number(env, "TRACKER_TICK_INTERVAL", 5.0, minimum=0.1)
        if env.get("TRACKER_WEBHOOK_URL", "").strip() and not env.get("TRACKER_WEBHOOK_SECRET", "").strip() and mode != "local":
            raise ConfigError("TRACKER_WEBHOOK_URL is set without TRACKER_WEBHOOK_SECRET: refusing to send unsigned webhooks")
        state_dir = Path(env.get("TRACKER_STATE_DIR", "").strip() or ".tracker")
        calls_per_poll_task = _integer(env, "TRACKER_CALLS_PER_TASK", 10, minimum=1)
        soft_time_limit = _number(env, "TRACKER_TASK_SOFT_TIME_LIMIT", 100.0, minimum=1.0)
        time_limit = _number(env, "TRACKER_TASK_TIME_LIMIT", 120.0, minimum=2.0)
        if time_limit <= soft_time_limit:
            raise ConfigError(
                f"TRACKER_TASK_TIME_LIMIT ({time_limit:g}) must be greater than "
                f"TRACKER_TASK_SOFT_TIME_LIMIT ({soft_time_limit:g})"
            )
        if calls_per_poll_task > MAX_CALLS_PER_POLL_TASK:
            raise ConfigError(
                f"TRACKER_CALLS_PER_TASK must be at most {MAX_CALLS_PER_POLL_TASK}, got {calls_per_poll_task}"
            )
        broker_url_setting = env.get("TRACKER_BROKER_URL", "").strip() or None
        settings = cls(
            database_url=database_url,
            broker_url_setting=broker_url_setting,
            poll_interval=poll_interval,
            tick_interval=tick_interval,
            max_poll_backoff_factor=_number(env, "TRACKER_MAX_POLL_BACKOFF", 8.0, minimum=1.0),
            not_found_after=_integer(env, "TRACKER_NOT_FOUND_AFTER", 5, minimum=3),
            lease_seconds=_number(
                env, "TRACKER_LEASE_SECONDS", max(180.0, 3 * tick_interval), minimum=5.0
            ),
            worker_concurrency=_integer(
                env, "TRACKER_WORKER_CONCURRENCY", default_worker_concurrency(), minimum=1
            ),
            calls_per_poll_task=calls_per_poll_task,
            worker_processes=_integer(env, "TRACKER_WORKER_PROCESSES", 1, minimum=1),
            http_connect_timeout=_number(env, "TRACKER_HTTP_CONNECT_TIMEOUT", 5.0, minimum=0.1),
            http_read_timeout=_number(env, "TRACKER_HTTP_READ_TIMEOUT", 30.0, minimum=0.1),
            http_deadline=_number(env, "TRACKER_HTTP_DEADLINE", 45.0, minimum=0.5),
            http_max_body_bytes=_integer(env, "TRACKER_HTTP_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=65536),
            task_soft_time_limit=soft_time_limit,
            task_time_limit=time_limit,
            circuit_failure_threshold=_integer(
                env, "TRACKER_CIRCUIT_FAILURES", 5, minimum=1
            ),
            refill_max_attempts=_integer(env, "TRACKER_REFILL_MAX_ATTEMPTS", 12, minimum=1),
            refill_retry_base=_number(env, "TRACKER_REFILL_RETRY_BASE", 300.0, minimum=0.1),
            refill_retry_cap=_number(env, "TRACKER_REFILL_RETRY_CAP", 21600.0, minimum=0.1),
            refill_cooldown_hours=_number(env, "TRACKER_REFILL_COOLDOWN_HOURS", 24.0, minimum=0.0),
            auto_refill_hours=_optional_number(env, "TRACKER_AUTO_REFILL_HOURS", minimum=0.0),
            auto_refill_scan_interval=_number(
                env, "TRACKER_AUTO_REFILL_SCAN_INTERVAL", 60.0, minimum=0.1
            ),
            count_probe=env.get("TRACKER_COUNT_PROBE", "").strip() or None,
            count_probe_interval=_number(env, "TRACKER_COUNT_PROBE_INTERVAL", 3600.0, minimum=0.1),
            catalog_sync_interval=_number(
                env, "TRACKER_CATALOG_SYNC_INTERVAL", 86400.0, minimum=1.0
            ),
            webhook_url=env.get("TRACKER_WEBHOOK_URL", "").strip() or None,
            webhook_secret=env.get("TRACKER_WEBHOOK_SECRET", "").strip() or None,
            webhook_timeout=_number(env, "TRACKER_WEBHOOK_TIMEOUT", 10.0, minimum=0.1),
            webhook_retry_for=_number(env, "TRACKER_WEBHOOK_RETRY_FOR", 259200.0, minimum=1.0),
            webhook_max_attempts=_optional_integer(env, "TRACKER_WEBHOOK_MAX_ATTEMPTS", minimum=1),
            event_task=env.get("TRACKER_EVENT_TASK", "").strip() or None,
            event_queue=env.get("TRACKER_EVENT_QUEUE", "").strip() or "tracker-events",
            balance_check_interval=_number(env, "TRACKER_BALANCE_CHECK_INTERVAL", 3600.0, minimum=1.0),
            key_probe_base=_number(env, "TRACKER_KEY_PROBE_BASE", 60.0, minimum=0.1),
            key_probe_cap=_number(env, "TRACKER_KEY_PROBE_CAP", 1800.0, minimum=0.1),
            secret_key=env.get("TRACKER_SECRET_KEY", "").strip() or None,
            mode=mode,
            allow_http_providers=_flag(env, "TRACKER_ALLOW_HTTP_PROVIDERS"),
            state_dir=state_dir,
            running_broker_url=None if broker_url_setting else read_broker_url_file(state_dir),
            sentinel_master=env.get("TRACKER_SENTINEL_MASTER", "").strip() or DEFAULT_SENTINEL_MASTER,
            sentinel_password=env.get("TRACKER_SENTINEL_PASSWORD", "").strip() or None,
            failover_pause=_number(env, "TRACKER_FAILOVER_PAUSE", DEFAULT_FAILOVER_PAUSE, minimum=1.0),
        )
        _check_time_limits(settings)
        return settings


# What a task keeps of its soft time limit to write what its calls brought back.
WRITE_MARGIN_SECONDS = 2.0


def _check_time_limits(settings: Settings) -> None:
    """A task starts no provider call and no webhook POST that could outlast its soft time
    limit: a limit shorter than one would mean no poll and no delivery, ever."""
    limit = settings.task_soft_time_limit
    needed = settings.provider_try_seconds + WRITE_MARGIN_SECONDS
    if limit < needed:
        raise ConfigError(
            f"TRACKER_TASK_SOFT_TIME_LIMIT ({limit:g} s) leaves no room for one provider call: one try may take "
            f"{settings.provider_try_seconds:g} s (TRACKER_HTTP_DEADLINE, or TRACKER_HTTP_CONNECT_TIMEOUT + "
            f"TRACKER_HTTP_READ_TIMEOUT when more), and the answers need {WRITE_MARGIN_SECONDS:g} s to be written: "
            f"raise the limit to at least {needed:g} s or lower the timeouts"
        )
    if settings.webhook_url and limit < settings.webhook_post_seconds:
        raise ConfigError(
            f"TRACKER_TASK_SOFT_TIME_LIMIT ({limit:g} s) leaves no room for one webhook delivery, which may take "
            f"{settings.webhook_post_seconds:g} s (TRACKER_WEBHOOK_TIMEOUT, the connect timeout and a margin): "
            "raise the limit or lower TRACKER_WEBHOOK_TIMEOUT"
        )


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings. Tests that change the environment call ``reset_settings``."""
    global _cached
    if _cached is None:
        _cached = Settings.from_env()
    return _cached


def reset_settings() -> None:
    global _cached
    _cached = None

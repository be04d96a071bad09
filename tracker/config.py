"""Settings, read from the environment once per process.

Every variable is documented in the README's Configuration table; keep the two in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///tracker.db"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"


class ConfigError(ValueError):
    """A setting has a value the tracker cannot use. The message names the variable."""


def normalize_database_url(url: str) -> str:
    """A plain ``postgresql://`` (or ``postgres://``) URL means psycopg 3, per the contract."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


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


def _integer(env: dict[str, str], name: str, default: int, *, minimum: int) -> int:
    value = _number(env, name, default, minimum=minimum)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {env.get(name)!r}")
    return int(value)


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
    worker_concurrency: int = 8
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 30.0
    circuit_failure_threshold: int = 5
    secret_key: str | None = field(default=None, repr=False)
    mode: str = "local"
    state_dir: Path = Path(".tracker")

    @property
    def broker_url(self) -> str:
        return self.broker_url_setting or DEFAULT_BROKER_URL

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
        mode = env.get("TRACKER_MODE", "").strip().lower()
        if not mode:
            # The embedded default (SQLite) is a local install; anything else is production.
            mode = "local" if database_url.startswith("sqlite") else "production"
        if mode not in ("local", "production"):
            raise ConfigError(f"TRACKER_MODE must be 'local' or 'production', got {mode!r}")
        poll_interval = _number(env, "TRACKER_POLL_INTERVAL", 300.0, minimum=0.1)
        tick_interval = _number(env, "TRACKER_TICK_INTERVAL", 5.0, minimum=0.1)
        return cls(
            database_url=database_url,
            broker_url_setting=env.get("TRACKER_BROKER_URL", "").strip() or None,
            poll_interval=poll_interval,
            tick_interval=tick_interval,
            max_poll_backoff_factor=_number(env, "TRACKER_MAX_POLL_BACKOFF", 8.0, minimum=1.0),
            not_found_after=_integer(env, "TRACKER_NOT_FOUND_AFTER", 5, minimum=3),
            lease_seconds=_number(
                env, "TRACKER_LEASE_SECONDS", max(180.0, 3 * tick_interval), minimum=5.0
            ),
            worker_concurrency=_integer(env, "TRACKER_WORKER_CONCURRENCY", 8, minimum=1),
            http_connect_timeout=_number(env, "TRACKER_HTTP_CONNECT_TIMEOUT", 5.0, minimum=0.1),
            http_read_timeout=_number(env, "TRACKER_HTTP_READ_TIMEOUT", 30.0, minimum=0.1),
            circuit_failure_threshold=_integer(
                env, "TRACKER_CIRCUIT_FAILURES", 5, minimum=1
            ),
            secret_key=env.get("TRACKER_SECRET_KEY", "").strip() or None,
            mode=mode,
            state_dir=Path(env.get("TRACKER_STATE_DIR", "").strip() or ".tracker"),
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

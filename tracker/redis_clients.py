"""Every Redis client of the tracker's own comes from here, built from the broker's URL.

``redis://``, ``rediss://`` and ``unix://`` URLs give a plain client. A Sentinel URL, in
Celery's form ``sentinel://[:password@]host:port[/db];sentinel://host2:port2;…``, gives
redis-py's own Sentinel client for the master named ``TRACKER_SENTINEL_MASTER``: it asks
the Sentinels for the master's address whenever it opens a connection. When Sentinel
demotes a master it closes every client connection to it, and a dead master's sockets
close too, so the next command finds its connection closed and opens it again on the
master the Sentinels name then. A connection still open to a demoted master answers
``READONLY``: redis-py drops it, that command fails, and the next goes to the new master.
As in kombu's Sentinel transport (which carries the broker itself), the first URL's user,
password and database number are those of the master; the Sentinels' own password, if
they have one, is ``TRACKER_SENTINEL_PASSWORD``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from tracker.config import DEFAULT_SENTINEL_MASTER, get_settings

if TYPE_CHECKING:
    from tracker.config import Settings

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_TIMEOUT_SECONDS = 5.0
# A command whose connection breaks is sent again a few times, over about a second.
# redis-py retries on the address the connection had (redis/redis-py#3874), so this
# rides out a blip, not a failover: a failover costs the commands in flight, and the
# next ones ask the Sentinels.
SENTINEL_RETRIES = 3
SENTINEL_RETRY_BACKOFF = (0.1, 1.0)  # base and cap, seconds


class NotARedisURL(ValueError):
    """The broker URL is neither a Redis URL nor a Sentinel one. The message never
    repeats the URL (it may hold a password)."""


@dataclass(frozen=True, slots=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelURL:
    """The Sentinels of a ``sentinel://…;sentinel://…`` URL, and the master's database
    number, user and password, read from the first part as kombu reads them."""
    parts = [part.strip() for part in url.split(";") if part.strip()]
    if not parts:
        raise NotARedisURL("TRACKER_BROKER_URL has no Sentinel address (sentinel://host:port;…)")
    sentinels: list[tuple[str, int]] = []
    for number, part in enumerate(parts, start=1):
        pieces = urlsplit(part)
        if pieces.scheme.lower() != SENTINEL_SCHEME:
            raise NotARedisURL(
                f"TRACKER_BROKER_URL: part {number} of a Sentinel URL is not sentinel://host:port "
                "(every part separated by ';' must be one)"
            )
        try:
            port = pieces.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise NotARedisURL(f"TRACKER_BROKER_URL: part {number} has a port that is not a number") from None
        if not pieces.hostname:
            raise NotARedisURL(f"TRACKER_BROKER_URL: part {number} names no Sentinel host")
        sentinels.append((pieces.hostname, port))
    first = urlsplit(parts[0])
    database = first.path.strip("/") or "0"
    if not database.isdigit():
        raise NotARedisURL("TRACKER_BROKER_URL: the database of a Sentinel URL must be a number (sentinel://host:port/0)")
    return SentinelURL(
        tuple(sentinels),
        int(database),
        unquote(first.username) if first.username else None,
        unquote(first.password) if first.password else None,
    )


def redis_client(
    url: str,
    *,
    master_name: str = DEFAULT_SENTINEL_MASTER,
    sentinel_password: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> redis.Redis:
    """A client of the Redis at ``url``; through its Sentinels for a ``sentinel://`` URL.
    Nothing is connected yet: a server that is down shows at the first command."""
    if not is_sentinel_url(url):
        try:
            return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        except ValueError:
            raise NotARedisURL(
                "TRACKER_BROKER_URL is not a Redis URL (redis://, rediss://, unix:// or sentinel://)"
            ) from None
    parsed = parse_sentinel_url(url)
    sentinel_options: dict[str, object] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if sentinel_password:
        sentinel_options["password"] = sentinel_password
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options)
    client: redis.Redis = sentinel.master_for(
        master_name,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        retry=Retry(ExponentialWithJitterBackoff(base=SENTINEL_RETRY_BACKOFF[0], cap=SENTINEL_RETRY_BACKOFF[1]), SENTINEL_RETRIES),
    )
    return client


def broker_redis(settings: Settings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> redis.Redis:
    """A client of the broker's Redis (``TRACKER_BROKER_URL``), where the tracker keeps its
    rate limits, budgets, slots, locks and counters."""
    return redis_client(
        settings.broker_url,
        master_name=settings.sentinel_master,
        sentinel_password=settings.sentinel_password,
        timeout=timeout,
    )


def broker_transport_options(settings: Settings) -> dict[str, object]:
    """What kombu's Sentinel transport needs besides the URL: the master's name and the
    Sentinels' password. Nothing for a plain Redis URL."""
    if not is_sentinel_url(settings.broker_url):
        return {}
    options: dict[str, object] = {"master_name": settings.sentinel_master}
    if settings.sentinel_password:
        options["sentinel_kwargs"] = {"password": settings.sentinel_password}
    return options


_coordination_lock = threading.Lock()
_coordination: redis.Redis | None = None


def coordination() -> redis.Redis:
    """The process's Redis client for locks and counts between workers (the broker's
    Redis; through Sentinel, whichever server is the master now)."""
    global _coordination
    with _coordination_lock:
        if _coordination is None:
            _coordination = broker_redis(get_settings())
        return _coordination

"""The gateway for an operator's own provider calls (``tracker provider sync``,
``tracker cancel``): the same client settings, shared Redis rate limit and call counting
as the workers' calls, so an operator's command cannot push a provider over its limit.

Without that Redis (the broker, ``TRACKER_BROKER_URL``) the command stops before any
call: it cannot tell whether workers are calling the provider right now.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tracker.cli.errors import CLIError

if TYPE_CHECKING:
    from tracker.config import Settings
    from tracker.providers.gateway import Gateway

REDIS_TIMEOUT_SECONDS = 5.0


@contextmanager
def operator_gateway(settings: Settings) -> Iterator[Gateway]:
    import redis

    from tracker.metrics import CallMetrics
    from tracker.providers.gateway import Gateway
    from tracker.providers.ratelimit import RateLimitBusy, RateLimiter
    from tracker.redis_clients import NotARedisURL, broker_redis

    try:
        client = broker_redis(settings, timeout=REDIS_TIMEOUT_SECONDS)
    except NotARedisURL as error:
        raise CLIError(str(error)) from None
    gateway = Gateway(settings, RateLimiter(client, failover_pause=settings.failover_pause), CallMetrics(client))
    try:
        client.ping()
        yield gateway
    except redis.RedisError as error:
        # The URL may hold a password: name the setting, not its value.
        raise CLIError(
            f"cannot reach Redis at TRACKER_BROKER_URL ({type(error).__name__}); the shared "
            "rate limit lives there: start Redis, or run the tracker with `tracker run`"
        ) from None
    except RateLimitBusy as error:
        raise CLIError(
            f"the provider's rate limit is busy, or cooling down after a 429, for "
            f"{error.wait_seconds:.0f} s; try again then"
        ) from None
    finally:
        gateway.close()

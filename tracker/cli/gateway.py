"""The gateway for an operator's own provider calls (``tracker provider sync``,
``tracker cancel``): the same client settings, shared Redis rate limit and call counting
as the workers' calls, so an operator's command cannot push a provider over its limit.

When the broker's Redis does not answer, no worker can be calling providers either (it
is their broker too), so the command goes ahead without the shared limit and says so.
"""

from __future__ import annotations

import sys
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

    client = redis.Redis.from_url(
        settings.broker_url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )
    try:
        client.ping()
        gateway = Gateway(settings, RateLimiter(client), CallMetrics(client))
    except redis.RedisError:
        print(
            "tracker: note: Redis (TRACKER_BROKER_URL) does not answer, so no worker is calling "
            "providers; these calls are not counted against the shared rate limit",
            file=sys.stderr,
        )
        gateway = Gateway(settings, rate_limiter=None)
    try:
        yield gateway
    except redis.RedisError as error:
        # The URL may hold a password: name the setting, not its value.
        raise CLIError(
            f"cannot reach Redis at TRACKER_BROKER_URL ({type(error).__name__}); the shared "
            "rate limit lives there: start Redis, or run the tracker with `tracker run`"
        ) from None
    except RateLimitBusy as error:
        raise CLIError(
            f"the provider's rate limit is taken by the workers for {error.wait_seconds:.0f} s; "
            "try again in a moment"
        ) from None
    finally:
        gateway.close()

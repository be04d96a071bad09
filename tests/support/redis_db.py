"""A Redis database number of the test's own, emptied afterwards.

Uses the Redis at TRACKER_TEST_REDIS_URL (default 127.0.0.1:6379) when one answers, and
otherwise starts the bundled server, so the suite also runs on a machine without Redis.

The claim is a key that expires (CLAIM_SECONDS), so a run that crashed before releasing
its database does not hold the number forever: once its claim has expired, the database
is taken back and flushed, but only when it carries USED_KEY, the mark every claim
leaves, i.e. only when it was a test's own. A database with other data is never touched.
"""

from __future__ import annotations

import os
import secrets

import redis

REDIS_BASE_URL = os.environ.get("TRACKER_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CLAIM_KEY = "tracker-test:claimed-by"
# Left without expiry by every claim: what a crashed run's database is recognised by.
USED_KEY = "tracker-test:used"
# Far longer than a test may run (pytest-timeout: 300 s) or a benchmark run takes.
CLAIM_SECONDS = 3 * 3600


def redis_reachable(base_url: str) -> bool:
    try:
        redis.Redis.from_url(base_url, socket_connect_timeout=1).ping()
        return True
    except redis.RedisError:
        return False


def _take(client: redis.Redis, token: str, seconds: int) -> bool:
    """Claims this database for ``token`` if it is free: empty, or a test's own whose
    claim has expired (flushed first)."""
    if not client.set(CLAIM_KEY, token, nx=True, ex=seconds):
        return False  # claimed, and the claim is still running
    if client.dbsize() == 1:
        client.set(USED_KEY, "1")
        return True
    if client.exists(USED_KEY):
        # A crashed run's leftovers. MULTI: nobody can claim it between the flush and our key.
        pipe = client.pipeline(transaction=True)
        pipe.flushdb()
        pipe.set(CLAIM_KEY, token, ex=seconds)
        pipe.set(USED_KEY, "1")
        pipe.execute()
        return True
    # Someone else's data, not a test's: give the number back untouched.
    if client.get(CLAIM_KEY) == token.encode():
        client.delete(CLAIM_KEY)
    return False


def claim_database(base_url: str, *, seconds: int = CLAIM_SECONDS) -> int:
    """A database number nobody else is using, emptied; marked so parallel runs skip it
    for ``seconds``."""
    token = secrets.token_hex(8)
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{base_url}/{number}")
        try:
            if _take(client, token, seconds):
                return number
        finally:
            client.close()
    raise RuntimeError(f"no free Redis database at {base_url} (1-15 are all in use)")


def release_database(base_url: str, number: int) -> None:
    client = redis.Redis.from_url(f"{base_url}/{number}")
    try:
        client.flushdb()
    finally:
        client.close()

"""A Redis database number of the test's own, emptied afterwards.

Uses the Redis at TRACKER_TEST_REDIS_URL (default 127.0.0.1:6379) when one answers, and
otherwise starts the bundled server, so the suite also runs on a machine without Redis.
"""

from __future__ import annotations

import os
import secrets

import redis

REDIS_BASE_URL = os.environ.get("TRACKER_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CLAIM_KEY = "tracker-test:claimed-by"


def redis_reachable(base_url: str) -> bool:
    try:
        redis.Redis.from_url(base_url, socket_connect_timeout=1).ping()
        return True
    except redis.RedisError:
        return False


def claim_database(base_url: str) -> int:
    """An empty database number nobody else is using; marked so parallel runs skip it."""
    token = secrets.token_hex(8)
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{base_url}/{number}")
        try:
            if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True):
                return number
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis database at {base_url} (1-15 are all in use)")


def release_database(base_url: str, number: int) -> None:
    client = redis.Redis.from_url(f"{base_url}/{number}")
    try:
        client.flushdb()
    finally:
        client.close()

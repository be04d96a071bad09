"""The one place the tracker reads the wall clock, so tests can see every use."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)

"""Webhook signatures: how the tracker signs deliveries, and how a shop verifies them.

Each delivery is a POST of one JSON event with these headers:

- ``X-Tracker-Event-Id``: the event's stable ID (deliveries are at least once: dedupe on it);
- ``X-Tracker-Timestamp``: Unix seconds when this delivery attempt was signed;
- ``X-Tracker-Signature``: ``sha256=`` + hex HMAC-SHA256 of ``"{timestamp}.{raw body}"``
  with the shared secret ``TRACKER_WEBHOOK_SECRET``.

Signing the timestamp with the body lets a receiver refuse replays of old deliveries.
A shop written in Python can import ``verify_signature``; docs/notifying.md shows the same in a
few lines for any language.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Tracker-Signature"
TIMESTAMP_HEADER = "X-Tracker-Timestamp"
EVENT_ID_HEADER = "X-Tracker-Event-Id"
DEFAULT_TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True when ``signature`` is ours for this body and timestamp, and the timestamp is
    within ``tolerance`` seconds of ``now``. The comparison takes constant time."""
    try:
        signed_at = int(timestamp)
    except ValueError:
        return False
    if abs(now - signed_at) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, signed_at, body), signature)

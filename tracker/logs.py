"""Structured logs that never carry a key.

Every tracker log record may carry context in ``extra`` (``provider``, ``order_id``,
``claim_id``, ...). ``ContextFormatter`` appends it as ``key=value`` pairs, or renders the
whole record as one JSON object when ``TRACKER_LOG_FORMAT=json``.

``SecretFilter`` is defence in depth: every API key the process decrypts is registered
with it, and any log line that would contain one has it replaced by ``[redacted]``,
whatever code produced the line (ours, requests', urllib3's or Celery's).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any

from tracker.apiv2.redact import redact

# Attributes every LogRecord has; anything else came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

_secrets_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(secret: str) -> None:
    if secret:
        with _secrets_lock:
            _secrets.add(secret)


def known_secrets() -> tuple[str, ...]:
    with _secrets_lock:
        return tuple(_secrets)


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


class SecretFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        secrets = known_secrets()
        if not secrets:
            return True
        message = record.getMessage()
        cleaned = redact(message, secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, redacted, and drop the live exception.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = redact(text, secrets), None
        return True


class ContextFormatter(logging.Formatter):
    def __init__(self, as_json: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        context = context_of(record)
        if self.as_json:
            payload: dict[str, Any] = {
                "at": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
                **{key: _plain(value) for key, value in context.items()},
            }
            if record.exc_info:
                payload["exception"] = self.formatException(record.exc_info)
            elif record.exc_text:
                payload["exception"] = record.exc_text
            return json.dumps(payload, default=str)
        line = super().format(record)
        if context:
            line += " " + " ".join(f"{key}={_plain(value)}" for key, value in context.items())
        return line


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def install(handler: logging.Handler) -> None:
    """Give a handler our formatter and the secret filter."""
    handler.setFormatter(ContextFormatter(as_json=os.environ.get("TRACKER_LOG_FORMAT", "").lower() == "json"))
    if not any(isinstance(existing, SecretFilter) for existing in handler.filters):
        handler.addFilter(SecretFilter())

from __future__ import annotations

import io
import json
import logging

import pytest

from tracker import logs

KEY = "sk-LOGTEST-5a6b7c8d9e"


def capture(as_json: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[logging.Logger, io.StringIO]:
    monkeypatch.setenv("TRACKER_LOG_FORMAT", "json" if as_json else "text")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.install(handler)
    logger = logging.getLogger(f"test.logs.{as_json}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_context_is_appended_as_key_values(monkeypatch: pytest.MonkeyPatch) -> None:
    logger, stream = capture(False, monkeypatch)
    logger.info("polled %d orders", 100, extra={"provider": "panel", "claim_id": 42})
    assert stream.getvalue().rstrip().endswith("polled 100 orders provider=panel claim_id=42")


def test_json_lines_carry_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    logger, stream = capture(True, monkeypatch)
    logger.warning("call failed", extra={"provider": "panel", "failures": 3})
    record = json.loads(stream.getvalue())
    assert record["message"] == "call failed"
    assert (record["provider"], record["failures"], record["level"]) == ("panel", 3, "WARNING")


def test_registered_keys_never_reach_a_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    logs.register_secret(KEY)
    logger, stream = capture(False, monkeypatch)
    logger.error("posting key=%s to the panel", KEY)
    try:
        raise RuntimeError(f"boom with {KEY}")
    except RuntimeError:
        logger.exception("failed")
    output = stream.getvalue()
    assert KEY not in output
    assert "boom with" in output

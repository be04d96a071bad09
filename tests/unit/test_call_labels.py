"""The label values the call counters may carry: a bounded set, whatever a caller passes."""

from __future__ import annotations

from tracker.metrics import ACTIONS, OUTCOMES, action_label, outcome_label


def test_known_actions_and_error_classes_are_kept() -> None:
    assert action_label("status") == "status" and action_label("refill_status") == "refill_status"
    assert outcome_label(None) == "ok"
    for error in ("InvalidKey", "ProviderTimeout", "NotJSON", "RateLimited", "HTTPError", "UnusableRefillId"):
        assert outcome_label(error) == error
    assert {"ok", "other", "InvalidKey", "NotSent", "InsecureProviderURL"} <= OUTCOMES


def test_anything_else_is_other() -> None:
    assert action_label("add&key=secret") == "other"
    assert outcome_label("ConnectionResetError: key=abc") == "other"
    assert "other" not in ACTIONS

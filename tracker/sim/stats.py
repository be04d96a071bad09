"""Request counters of the simulated provider, so tests can check how they were called.

Per action: calls, IDs carried in total, the most IDs in one call, calls rejected for
carrying more than 100 IDs, and the most calls seen in any 1-second window (real time).
The window is exact: every call closes a window ``(t - 1 s, t]`` and the deque holds only
the calls inside it, so memory stays bounded by the call rate.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 1.0
_WINDOW_CAP = 200_000
ALL_ACTIONS = "*"


@dataclass(slots=True)
class _ActionCounters:
    calls: int = 0
    ids_total: int = 0
    max_ids: int = 0
    over_limit: int = 0
    max_calls_in_any_1s_window: int = 0
    window: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW_CAP))

    def record(self, ids: int, over_limit: bool, now: float) -> None:
        self.calls += 1
        self.ids_total += ids
        self.max_ids = max(self.max_ids, ids)
        if over_limit:
            self.over_limit += 1
        window = self.window
        window.append(now)
        horizon = now - WINDOW_S
        while window[0] <= horizon:
            window.popleft()
        self.max_calls_in_any_1s_window = max(self.max_calls_in_any_1s_window, len(window))

    def to_json(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "ids_total": self.ids_total,
            "max_ids": self.max_ids,
            "rejected_over_100": self.over_limit,
            "max_calls_in_any_1s_window": self.max_calls_in_any_1s_window,
        }


class RequestStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: dict[str, _ActionCounters] = {}
        self._all = _ActionCounters()
        self._invalid_key = 0
        self.track_per_id = False
        self._polls_per_id: dict[int, int] = {}

    def record_call(self, action: str, ids: int, over_limit: bool, now: float) -> None:
        with self._lock:
            counters = self._actions.get(action)
            if counters is None:
                counters = self._actions[action] = _ActionCounters()
            counters.record(ids, over_limit, now)
            self._all.record(ids, over_limit, now)

    def record_invalid_key(self) -> None:
        with self._lock:
            self._invalid_key += 1

    def record_status_polls(self, order_ids: Iterable[int]) -> None:
        if not self.track_per_id:
            return
        with self._lock:
            polls = self._polls_per_id
            for order_id in order_ids:
                polls[order_id] = polls.get(order_id, 0) + 1

    def reset(self) -> None:
        with self._lock:
            self._actions = {}
            self._all = _ActionCounters()
            self._invalid_key = 0
            self._polls_per_id = {}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snapshot: dict[str, Any] = {
                "actions": {name: c.to_json() for name, c in sorted(self._actions.items())},
                "all": self._all.to_json(),
                "rejected_invalid_key": self._invalid_key,
                "track_per_id": self.track_per_id,
            }
            if self.track_per_id:
                snapshot["status_polls_per_order"] = {
                    str(order_id): count for order_id, count in self._polls_per_id.items()
                }
            return snapshot

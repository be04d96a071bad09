"""``SimAdmin``: a small HTTP client of the sim's admin API.

For tests and demos that run the sim as a separate process (``tracker sim``). It has the
same admin methods, with the same signatures and results, as the in-process
``SimServer``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import requests

from tracker.sim.admin_methods import SimAdminMethods

_IDS_PER_QUERY = 1000


class SimAdminError(ValueError):
    """The admin API refused a request (bad input, unknown order, ...).

    A ``ValueError``, like the errors of the in-process ``SimServer`` methods.
    """


class SimAdmin(SimAdminMethods):
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        """``base_url``: ``http://HOST:PORT``; an ``.../api/v2`` URL is accepted too."""
        base = base_url.rstrip("/")
        for suffix in ("/api/v2", "/admin"):
            base = base.removesuffix(suffix)
        self._base_url = base
        self.timeout = timeout
        self._session = requests.Session()

    @property
    def base_url(self) -> str:
        return self._base_url

    def close(self) -> None:
        self._session.close()

    def _call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        response = self._session.request(
            method, f"{self.base_url}{path}", json=body, params=params, timeout=self.timeout
        )
        payload = response.json()
        if response.status_code != 200:
            raise SimAdminError(f"{method} {path}: HTTP {response.status_code}: {payload}")
        return payload

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET", "/admin/health")
                return
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _seed(self, body: dict[str, Any]) -> tuple[int, int]:
        reply = self._call("POST", "/admin/orders", {**body, "return_ids": False})
        return int(reply["first"]), int(reply["last"])

    def _by_id(self, path: str, field: str, ids: Iterable[int]) -> dict[int, Any]:
        # Ids travel in the query string; chunks keep the request line short.
        wanted = list(ids)
        found: dict[int, Any] = {}
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            chunk = ",".join(str(item) for item in wanted[start : start + _IDS_PER_QUERY])
            reply = self._call("GET", path, params={"ids": chunk})[field]
            found.update((int(key), value) for key, value in reply.items())
        return found

    def truth(self, ids: Iterable[int]) -> dict[int, dict[str, Any] | None]:
        return self._by_id("/admin/orders", "orders", ids)

    def refill_truth(self, ids: Iterable[int]) -> dict[int, dict[str, Any] | None]:
        return self._by_id("/admin/refills", "refills", ids)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/admin/stats")
        return result

    def reset_stats(self) -> None:
        self._call("POST", "/admin/stats/reset")

    def _add_fault(self, body: dict[str, Any]) -> None:
        self._call("POST", "/admin/faults", body)

    def clear_faults(self) -> int:
        cleared: int = self._call("DELETE", "/admin/faults")["cleared"]
        return cleared

    def set_config(self, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/admin/config", changes)
        return result

    def release_held(self) -> int:
        released: int = self._call("POST", "/admin/release")["released"]
        return released

    def drop(self, order: int, amount: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", "/admin/drop", {"order": order, "amount": amount}
        )
        return result

    def count(self, order: int) -> dict[str, Any] | None:
        response = self._session.get(
            f"{self.base_url}/count", params={"order": str(order)}, timeout=self.timeout
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def advance(self, seconds: float) -> float:
        sim_now: float = self._call("POST", "/admin/clock", {"advance_s": seconds})["sim_now"]
        return sim_now

    def reset(self) -> None:
        self._call("POST", "/admin/reset")

"""The admin API (JSON, no key) that tests and the demo use to drive and inspect the sim.

=======  ======================  ===============================================================
method   path                    effect
=======  ======================  ===============================================================
GET      /admin/health           ``{"ok": true, "dialect", "sim_now"}``
POST     /admin/orders           seed orders: ``{"count", "service", "quantity", "outcome",
                                 "pending_s", "progress_s", "link", "age_s", "start_count",
                                 "natural_drop", "return_ids"}`` -> ``{"first", "last",
                                 "count", "ids"}`` (``ids`` left out when ``return_ids`` is
                                 false; ids of one seed are always consecutive)
GET      /admin/orders?ids=1,2   the truth about each order (``null`` when unknown)
GET      /admin/refills?ids=1,2  the truth about each refill
GET      /admin/stats            request counters, faults fired and queued, held requests
POST     /admin/stats/reset      zero the request counters
GET/POST /admin/config           read / change speed, latency_ms, api_key, dialect, ...
GET      /admin/faults           the queued fault rules
POST     /admin/faults           queue a rule ``{"kind", "count", "probability", "actions",
                                 "seconds"}``
DELETE   /admin/faults           clear the queue
POST     /admin/release          let every held request go on -> ``{"released": n}``
POST     /admin/drop             ``{"order", "amount"}``: a completed order loses ``amount``
POST     /admin/catalog/again    ``{"service", "category", "name", "rate"}``: list a service
                                 once more, last, under another category -> ``{"services"}``
GET/POST /admin/clock            read sim time / jump ahead: ``{"advance_s": s}``
POST     /admin/reset            forget everything, restore the startup config
GET      /count?order=ID         ``{"order", "count", "expected"}``, the count probe endpoint
=======  ======================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracker.sim.api import parse_id, split_ids
from tracker.sim.dialects import ERR_ORDER_NOT_FOUND
from tracker.sim.faults import parse_rule
from tracker.sim.provider import AdminError, SimProvider

Reply = tuple[int, Any]


def _ids_from_query(query: Mapping[str, str]) -> list[int]:
    ids: list[int] = []
    for token in split_ids(query.get("ids", "")):
        parsed = parse_id(token)
        if parsed is None:
            raise AdminError(f"not an id: {token!r}")
        ids.append(parsed)
    return ids


def _seed(provider: SimProvider, body: Mapping[str, Any]) -> Reply:
    batch = provider.seed_orders(body)
    reply: dict[str, Any] = {"first": batch.first_id, "last": batch.last_id, "count": batch.count}
    if body.get("return_ids", True):
        reply["ids"] = list(range(batch.first_id, batch.last_id + 1))
    return 200, reply


def _add_fault(provider: SimProvider, body: Mapping[str, Any]) -> Reply:
    try:
        rule = parse_rule(dict(body))
    except ValueError as error:
        raise AdminError(str(error)) from None
    provider.faults.add(rule)
    return 200, {"queued": rule.to_json()}


def _drop(provider: SimProvider, body: Mapping[str, Any]) -> Reply:
    order_id = body.get("order")
    if not isinstance(order_id, int) or isinstance(order_id, bool):
        raise AdminError("order must be an integer id")
    return 200, provider.drop(order_id, body.get("amount"))


def _count(provider: SimProvider, query: Mapping[str, str]) -> Reply:
    order_id = parse_id(query.get("order", "").strip())
    found = provider.count(order_id) if order_id is not None else None
    if found is None:
        return 404, {"error": ERR_ORDER_NOT_FOUND}
    return 200, found


def _clock(provider: SimProvider, body: Mapping[str, Any]) -> Reply:
    return 200, {"sim_now": provider.advance(body.get("advance_s", 0.0))}


def _reset_stats(provider: SimProvider) -> Reply:
    provider.stats.reset()
    provider.faults.reset_counts()
    return 200, {"ok": True}


def _reset(provider: SimProvider) -> Reply:
    provider.reset()
    return 200, {"ok": True}


def handle_admin(
    provider: SimProvider, method: str, path: str, query: Mapping[str, str], body: Any
) -> Reply:
    """Route one admin request; ``body`` is the decoded JSON body (or None)."""
    path = path.rstrip("/") or "/"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return 400, {"error": "the body must be a JSON object"}
    routes: dict[tuple[str, str], Any] = {
        ("GET", "/admin/health"): lambda: (
            200,
            {"ok": True, "dialect": provider.config.dialect, "sim_now": provider.now()},
        ),
        ("POST", "/admin/orders"): lambda: _seed(provider, body),
        ("GET", "/admin/orders"): lambda: (200, provider.truth(_ids_from_query(query))),
        ("GET", "/admin/refills"): lambda: (200, provider.refill_truth(_ids_from_query(query))),
        ("GET", "/admin/stats"): lambda: (200, provider.stats_snapshot()),
        ("POST", "/admin/stats/reset"): lambda: _reset_stats(provider),
        ("GET", "/admin/config"): lambda: (200, provider.config.public_view()),
        ("POST", "/admin/config"): lambda: (200, provider.configure(body)),
        ("GET", "/admin/faults"): lambda: (200, {"faults": provider.faults.snapshot()}),
        ("POST", "/admin/faults"): lambda: _add_fault(provider, body),
        ("DELETE", "/admin/faults"): lambda: (200, {"cleared": provider.faults.clear()}),
        ("POST", "/admin/release"): lambda: (200, {"released": provider.gate.release()}),
        ("POST", "/admin/drop"): lambda: _drop(provider, body),
        ("POST", "/admin/catalog/again"): lambda: (200, provider.list_service_again(body)),
        ("GET", "/admin/clock"): lambda: (
            200,
            {"sim_now": provider.now(), "speed": provider.clock.speed},
        ),
        ("POST", "/admin/clock"): lambda: _clock(provider, body),
        ("POST", "/admin/reset"): lambda: _reset(provider),
        ("GET", "/count"): lambda: _count(provider, query),
    }
    route = routes.get((method, path))
    if route is None:
        if any(known_path == path for _, known_path in routes):
            return 405, {"error": f"{method} not allowed on {path}"}
        return 404, {"error": f"no such endpoint: {path}"}
    try:
        reply: Reply = route()
    except AdminError as error:
        return error.status, {"error": str(error)}
    return reply

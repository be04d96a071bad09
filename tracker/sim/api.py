"""API v2 request handling: form parameters in, a JSON-able answer out (no HTTP here).

Every answer is HTTP 200, as real panels do; errors are ``{"error": ...}`` bodies.
The request forms each dialect accepts are described in ``tracker.sim.dialects``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tracker.sim import dialects as msg
from tracker.sim.dialects import MAX_IDS_PER_CALL, Dialect
from tracker.sim.provider import SimProvider

Params = Mapping[str, str]
Answer = Any
R = TypeVar("R")

# The parameter that carries a list of IDs, per action.
_MULTI_PARAM = {
    "status": "orders",
    "refill": "orders",
    "refill_status": "refills",
    "cancel": "orders",
}
_SINGLE_PARAM = {"status": "order", "refill": "order", "refill_status": "refill", "cancel": "order"}


def split_ids(text: str) -> list[str]:
    return [token for token in (part.strip() for part in text.split(",")) if token]


def parse_id(token: str) -> int | None:
    """A positive integer id, or None for anything else ("abc", "-1", "0", "1.5")."""
    if token.isascii() and token.isdigit():
        value = int(token)
        return value if value > 0 else None
    return None


def _id_key(token: str) -> int | str:
    parsed = parse_id(token)
    return parsed if parsed is not None else token


def count_ids(params: Params) -> tuple[str, int]:
    """The action and how many IDs the request carries (for the request counters)."""
    action = params.get("action", "")
    multi = _MULTI_PARAM.get(action)
    if multi is not None and multi in params:
        return action, len(split_ids(params[multi]))
    single = _SINGLE_PARAM.get(action)
    if single is not None and single in params:
        return action, 1
    return action, 0


def _error(message: str) -> dict[str, str]:
    return {"error": message}


def _id_list_error(tokens: list[str]) -> dict[str, str] | None:
    """What a list of IDs is refused with before any of them is looked up: none, or too many."""
    if not tokens:
        return _error(msg.ERR_INCORRECT_REQUEST)
    if len(tokens) > MAX_IDS_PER_CALL:
        return _error(msg.ERR_TOO_MANY_IDS)
    return None


def _per_id(tokens: list[str], answer: Callable[[int], R], not_an_id: R) -> list[tuple[int | str, R]]:
    """(each ID as the dialect echoes it, its answer), ``not_an_id`` for a token that is none."""
    results: list[tuple[int | str, R]] = []
    for token in tokens:
        parsed = parse_id(token)
        results.append((_id_key(token), answer(parsed) if parsed is not None else not_an_id))
    return results


def _services(provider: SimProvider, dialect: Dialect, params: Params) -> Answer:
    return dialect.services(provider.catalog)


def _balance(provider: SimProvider, dialect: Dialect, params: Params) -> Answer:
    return dialect.balance(provider.balance, provider.currency)


def _positive_int(text: str | None) -> int | None:
    return parse_id(text.strip()) if text is not None else None


def _add(provider: SimProvider, dialect: Dialect, params: Params) -> Answer:
    service_id = _positive_int(params.get("service"))
    service = provider.services.get(service_id) if service_id is not None else None
    if service is None:
        return _error(msg.ERR_SERVICE_NOT_FOUND)
    link = params.get("link", "").strip()
    if not link:
        return _error(msg.ERR_BAD_LINK)
    comments = params.get("comments")
    if service.takes_comments and comments:
        quantity: int | None = len([line for line in comments.splitlines() if line.strip()])
    else:
        quantity = _positive_int(params.get("quantity"))
    if quantity is None or quantity < service.min:
        return _error(f"Quantity less than minimal {service.min}")
    if quantity > service.max:
        return _error(f"Quantity more than maximal {service.max}")
    runs = 1
    if params.get("runs"):
        parsed_runs = _positive_int(params.get("runs"))
        if parsed_runs is None:
            return _error("Incorrect runs")
        runs = parsed_runs
    interval = params.get("interval")
    if interval and not interval.strip().isdigit():
        return _error("Incorrect interval")
    result = provider.add_order(service, link, quantity * runs)
    return {"order": result} if isinstance(result, int) else _error(result)


def _status(provider: SimProvider, dialect: Dialect, params: Params) -> Answer:
    currency = provider.currency
    if "orders" in params:
        tokens = split_ids(params["orders"])
        refused = _id_list_error(tokens)
        if refused is not None:
            return refused
        if len(tokens) == 1 and provider.config.single_id_orders_as_order:
            return _status(provider, dialect, {"order": tokens[0]})
        t = provider.now()
        answer: dict[str, Any] = {}
        polled: list[int] = []
        for token in tokens:
            order_id = parse_id(token)
            state = provider.order_state(order_id, t) if order_id is not None else None
            if order_id is None or state is None:
                answer[token] = _error(msg.ERR_ORDER_NOT_FOUND)
                continue
            answer[str(order_id)] = dialect.order_status(state, currency)
            polled.append(order_id)
        provider.stats.record_status_polls(polled)
        return answer
    if "order" in params:
        order_id = parse_id(params["order"].strip())
        state = provider.order_state(order_id, provider.now()) if order_id is not None else None
        if order_id is None or state is None:
            return _error(msg.ERR_ORDER_NOT_FOUND)
        provider.stats.record_status_polls((order_id,))
        return dialect.order_status(state, currency)
    return _error(msg.ERR_INCORRECT_REQUEST)


def _refill_one(provider: SimProvider, dialect: Dialect, token: str) -> Answer:
    order_id = parse_id(token.strip())
    result = provider.request_refill(order_id) if order_id is not None else msg.ERR_ORDER_NOT_FOUND
    return dialect.refill_created(result) if isinstance(result, int) else _error(result)


def _refill(provider: SimProvider, dialect: Dialect, params: Params) -> Answer:
    if "orders" in params:
        tokens = split_ids(params["orders"])
        if dialect.refill_accepts_orders_as_single:
            if len(tokens) != 1:
                return _error(msg.ERR_INCORRECT_REQUEST)
            return _refill_one(provider, dialect, tokens[0])
        if not dialect.multi_refill:
            return _error(msg.ERR_INCORRECT_REQUEST)
        refused = _id_list_error(tokens)
        if refused is not None:
            return refused
        return dialect.refill_created_multi(_per_id(tokens, provider.request_refill, msg.ERR_ORDER_NOT_FOUND))
    if "order" in params:
        return _refill_one(provider, dialect, params["order"])
    return _error(msg.ERR_INCORRECT_REQUEST)


def _refill_status(provider: SimProvider, dialect: Dialect, params: Params) -> Answer:
    t = provider.now()
    if "refills" in params:
        tokens = split_ids(params["refills"])
        if not dialect.multi_refill_status:
            return _error(msg.ERR_INCORRECT_REQUEST)
        refused = _id_list_error(tokens)
        if refused is not None:
            return refused
        statuses = _per_id(tokens, lambda refill_id: provider.refill_status(refill_id, t), None)
        return dialect.refill_status_multi(statuses)
    if "refill" in params:
        refill_id = parse_id(params["refill"].strip())
        status = provider.refill_status(refill_id, t) if refill_id is not None else None
        if status is None:
            return _error(dialect.refill_not_found)
        return dialect.refill_status(status)
    return _error(msg.ERR_INCORRECT_REQUEST)


def _cancel(provider: SimProvider, dialect: Dialect, params: Params) -> Answer:
    if not dialect.cancel_supported:
        return _error(msg.ERR_INCORRECT_REQUEST)
    text = params.get("orders", params.get("order"))
    tokens = split_ids(text) if text is not None else []
    refused = _id_list_error(tokens)
    if refused is not None:
        return refused
    return dialect.cancel_multi(_per_id(tokens, provider.request_cancel, msg.ERR_ORDER_NOT_FOUND))


_ACTIONS: dict[str, Callable[[SimProvider, Dialect, Params], Answer]] = {
    "services": _services,
    "add": _add,
    "status": _status,
    "refill": _refill,
    "refill_status": _refill_status,
    "cancel": _cancel,
    "balance": _balance,
}

KNOWN_ACTIONS = frozenset(_ACTIONS)
OTHER_ACTION = "<other>"


def handle_api(provider: SimProvider, params: Params) -> Answer:
    """Answer one API v2 request whose form parameters are ``params``."""
    if not provider.key_ok(params.get("key", "")):
        provider.stats.record_invalid_key()
        return _error(msg.ERR_INVALID_KEY)
    handler = _ACTIONS.get(params.get("action", ""))
    if handler is None:
        return _error(msg.ERR_INCORRECT_REQUEST)
    return handler(provider, provider.dialect, params)

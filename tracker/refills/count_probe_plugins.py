"""Count probes: plug-ins that read an order target's current count (followers, views...).

API v2 has no "current count", so the tracker cannot see a drop by itself. A count probe
is any callable ``probe(target: ProbeTarget) -> int | None`` named by a dotted path in
``TRACKER_COUNT_PROBE`` (``package.module.function`` or ``package.module:function``). It
returns the target's count now, or None when it cannot tell. It gets no API key.

The tracker compares the count with ``start_count`` plus what the order delivered, and
records a drop (``source='probe'``) when the count is lower. ``sim_count_probe`` reads the
simulated provider's ``GET /count?order=ID``, so demos and tests use this same path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import requests

PROBE_TIMEOUT = (3.05, 10.0)


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    provider: str
    api_url: str
    order_id: int
    service_id: int | None
    link: str | None


CountProbe = Callable[[ProbeTarget], int | None]


class ProbeConfigError(ValueError):
    pass


def load_count_probe(path: str) -> CountProbe:
    """Import the probe named by ``path``; a clear error names what is wrong."""
    module_name, separator, attribute = path.partition(":")
    if not separator:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ProbeConfigError(
            f"TRACKER_COUNT_PROBE={path!r} is not a dotted path like package.module.function"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ProbeConfigError(
            f"TRACKER_COUNT_PROBE: cannot import {module_name}: {error}"
        ) from None
    probe = getattr(module, attribute, None)
    if not callable(probe):
        raise ProbeConfigError(f"TRACKER_COUNT_PROBE: {path} is not a callable")
    loaded: CountProbe = probe
    return loaded


def _sim_base(api_url: str) -> str:
    base = api_url.rstrip("/")
    return base.removesuffix("/api/v2")


def sim_count_probe(target: ProbeTarget) -> int | None:
    """The simulated provider's count endpoint, next to its API: ``GET /count?order=ID``."""
    response = requests.get(
        f"{_sim_base(target.api_url)}/count",
        params={"order": str(target.order_id)},
        timeout=PROBE_TIMEOUT,
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    count = response.json().get("count")
    return count if isinstance(count, int) and not isinstance(count, bool) else None

"""What `tracker demo` shows: a snapshot of the tracker's database and the sims' request
counters, rendered as a live table, as plain progress lines, and as the final summary.

Pure: it formats what it is given and reads nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rich.table import Table

NOT_POLLED = "not polled"
# Columns in the order an order moves through them; any other status gets its own column.
STATUS_ORDER = (NOT_POLLED, "Pending", "Processing", "In progress", "Unknown", "Completed", "Partial", "Canceled", "Not found")


@dataclass(frozen=True, slots=True)
class ProviderView:
    name: str
    orders: int
    final: int
    by_status: Mapping[str, int]
    final_by_status: Mapping[str, int]
    drops: int
    refill_requests: int
    refills_accepted: int
    refills_final: int
    refills_by_status: Mapping[str, int]
    calls_by_action: Mapping[str, int]
    status_calls: int
    status_ids: int

    @property
    def calls(self) -> int:
        return sum(self.calls_by_action.values())


@dataclass(frozen=True, slots=True)
class DemoSnapshot:
    elapsed: float
    providers: tuple[ProviderView, ...]
    order_events: int = 0
    refill_events: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def orders(self) -> int:
        return sum(view.orders for view in self.providers)

    @property
    def final(self) -> int:
        return sum(view.final for view in self.providers)

    def total(self, attribute: str) -> int:
        return sum(int(getattr(view, attribute)) for view in self.providers)

    def merged(self, attribute: str) -> Counter[str]:
        merged: Counter[str] = Counter()
        for view in self.providers:
            merged.update(getattr(view, attribute))
        return merged


def _ordered(statuses: Iterable[str]) -> list[str]:
    present = set(statuses)
    known = [status for status in STATUS_ORDER if status in present]
    return known + sorted(present - set(STATUS_ORDER))


def _by_status(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{status} {counts[status]}" for status in _ordered(counts) if counts[status]) or "none"


def ids_per_call(ids: int, calls: int) -> str:
    return f"{ids / calls:.1f}" if calls else "-"


def live_table(snapshot: DemoSnapshot) -> Table:
    statuses = _ordered(snapshot.merged("by_status"))
    table = Table(title=f"tracker demo: {snapshot.elapsed:5.1f} s", title_justify="left")
    table.add_column("provider", style="bold")
    for status in statuses:
        table.add_column(status, justify="right")
    table.add_column("final", justify="right")
    table.add_column("drops", justify="right")
    table.add_column("refills req/acc/final", justify="right")
    table.add_column("API calls", justify="right")
    table.add_column("IDs/status call", justify="right")

    def row(name: str, views: list[ProviderView]) -> list[str]:
        merged: Counter[str] = Counter()
        for view in views:
            merged.update(view.by_status)
        refills = "/".join(
            str(sum(getattr(view, part) for view in views))
            for part in ("refill_requests", "refills_accepted", "refills_final")
        )
        return [
            name,
            *(str(merged.get(status, 0)) for status in statuses),
            f"{sum(v.final for v in views)}/{sum(v.orders for v in views)}",
            str(sum(view.drops for view in views)),
            refills,
            str(sum(view.calls for view in views)),
            ids_per_call(sum(v.status_ids for v in views), sum(v.status_calls for v in views)),
        ]

    for view in snapshot.providers:
        table.add_row(*row(view.name, [view]))
    table.add_section()
    table.add_row(*row("all", list(snapshot.providers)), style="bold")
    if snapshot.notes:
        table.caption = "  ".join(snapshot.notes)
    return table


def plain_line(snapshot: DemoSnapshot) -> str:
    parts = [f"{view.name} {view.final}/{view.orders} final" for view in snapshot.providers]
    return (
        f"[{snapshot.elapsed:5.1f}s] " + ", ".join(parts)
        + f"; drops {snapshot.total('drops')}, refills {snapshot.total('refill_requests')}"
        f"/{snapshot.total('refills_accepted')}/{snapshot.total('refills_final')}"
        f"; API calls {snapshot.total('calls')}"
    )


def summary_text(snapshot: DemoSnapshot, *, finished: bool) -> str:
    status_calls = snapshot.total("status_calls")
    calls_by_action = snapshot.merged("calls_by_action")
    refills_by_status = snapshot.merged("refills_by_status")
    active = snapshot.orders - snapshot.final
    ending = "everything reached a final status" if finished else f"stopped early, {active} orders still active"
    lines = [
        "demo summary",
        f"  elapsed:      {snapshot.elapsed:.1f} s ({ending})",
        f"  orders:       {snapshot.orders} tracked, {snapshot.final} final: "
        f"{_by_status(snapshot.merged('final_by_status'))}",
        f"  transitions:  {snapshot.order_events} order events, {snapshot.refill_events} refill events recorded",
        f"  refills:      {snapshot.total('drops')} drops reported, {snapshot.total('refill_requests')} requested, "
        f"{snapshot.total('refills_accepted')} accepted, {snapshot.total('refills_final')} final "
        f"({_by_status(refills_by_status)})",
        f"  API calls:    {sum(calls_by_action.values())}: "
        + ", ".join(f"{action} {number}" for action, number in sorted(calls_by_action.items())),
        "  per provider: " + ", ".join(f"{view.name} {view.calls}" for view in snapshot.providers),
        f"  IDs per call: {ids_per_call(snapshot.total('status_ids'), status_calls)} per status call "
        f"({snapshot.total('status_ids')} IDs in {status_calls} calls)",
    ]
    return "\n".join(lines)

"""The packages of ``tracker`` form layers: a module imports only from its own package or
from packages ranked lower. Checked on the source with ``ast``, so an import hidden inside
a function or under ``TYPE_CHECKING`` counts like any other.

The table is the one in docs/architecture.md ("The code"); change both together.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path


import tracker

PACKAGE_ROOT = Path(tracker.__file__).parent

# Lowest first. A package is a subpackage (``tracker.db``) or a top-level module
# (``tracker.config``); the root ``tracker`` package itself is listed as "tracker".
# Packages of the same rank may not import each other either.
RANKS: dict[str, int] = {
    # 0: foundations, importing nothing of tracker. core: the pure rules (statuses, the
    # state machines, scheduling, health, the clock); config: the settings.
    "core": 0,
    "config": 0,
    # 1: apiv2: the API v2 client, its tolerant parsing, its error taxonomy and the
    # reading of its free-text messages. It speaks core's statuses. redis_clients: the one
    # factory of the tracker's Redis clients (plain, or the master through Sentinel).
    "apiv2": 1,
    "redis_clients": 1,
    # 2: adapters every slice may use: the database (models, sessions, claims), logging,
    # metrics, and the task base; sim, the simulated provider (kept apart by the
    # entry-point rule below).
    "db": 2,
    "logs": 2,
    "metrics": 2,
    "task_base": 2,
    "sim": 2,
    # 3-6: the slices, each with its tasks beside its code. The outbox is lowest because
    # every later slice records its events in its own transaction.
    "outbox": 3,
    # providers: registry, keys, gateway, rate limit, health, catalog.
    "providers": 4,
    # orders (the shop's enqueue, cancel, reopen, views) and refills (drops, requests,
    # attempts, auto-refill, count probes) are siblings: neither imports the other.
    "orders": 5,
    "refills": 5,
    # polling: the dispatcher and the one engine that polls orders and refills and sends
    # refill attempts.
    "polling": 6,
    # 7: runtimes: the Celery app and its signals, `tracker run`, the demo, the exporter.
    "worker": 7,
    "ops": 7,
    # 8: the `tracker` command; the root package (lazily exposes the Celery app); and two
    # public paths kept from before the slices (`tracker.webhooks`, `tracker.probes`).
    "cli": 8,
    # testing: in-memory stand-ins for use-case tests (tests/usecases); the tracker never
    # imports it.
    "testing": 8,
    "tracker": 8,
    "webhooks": 8,
    "probes": 8,
}

# sim is a tool, not a part of the tracker: only the entry points may start it.
SIM_IMPORTERS = frozenset({"sim", "cli", "ops"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tracker"


def _imported_modules(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """Every ``tracker`` module that ``path`` imports, at any depth of its syntax tree."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: resolved against the importing module's package.
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # ``from tracker import logs`` imports the module tracker.logs.
                submodule = f"{target}.{alias.name}"
                yield node.lineno, submodule if submodule in MODULES else target


MODULES = frozenset(_module_name(path) for path in PACKAGE_ROOT.rglob("*.py"))


def _package_imports() -> list[tuple[str, int, str, str]]:
    """(module, line, imported module, imported package) for every tracker import."""
    found: dict[tuple[str, int, str, str], None] = {}  # ordered, one per imported module
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        module = _module_name(path)
        for line, target in _imported_modules(path, module):
            if target == "tracker" or target.startswith("tracker."):
                found[(module, line, target, _package_of(target))] = None
    return list(found)


IMPORTS = _package_imports()


def test_every_package_has_a_rank() -> None:
    packages = {_package_of(_module_name(path)) for path in PACKAGE_ROOT.rglob("*.py")}
    assert packages - RANKS.keys() == set(), "add the new package to RANKS and the docs"


def test_no_module_imports_a_higher_or_sibling_layer() -> None:
    upward = [
        f"{module}:{line} imports {target} ({_package_of(module)} rank "
        f"{RANKS[_package_of(module)]} -> {package} rank {RANKS[package]})"
        for module, line, target, package in IMPORTS
        if package != _package_of(module) and RANKS[package] >= RANKS[_package_of(module)]
    ]
    assert upward == []


def test_core_imports_nothing_of_tracker_outside_core() -> None:
    outside = [
        f"{module}:{line} imports {target}"
        for module, line, target, package in IMPORTS
        if _package_of(module) == "core" and package != "core"
    ]
    assert outside == []


def test_only_entry_points_import_sim() -> None:
    importers = [
        f"{module}:{line} imports {target}"
        for module, line, target, package in IMPORTS
        if package == "sim" and _package_of(module) not in SIM_IMPORTERS
    ]
    assert importers == []


def test_no_import_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = {}
    for module, _line, _target, package in IMPORTS:
        if package != _package_of(module):
            edges.setdefault(_package_of(module), set()).add(package)
    cycles = []
    for start in sorted(edges):
        # Depth-first search for a path from one of start's imports back to start.
        stack = [(next_package, [start, next_package]) for next_package in sorted(edges[start])]
        seen: set[str] = set()
        while stack:
            package, path = stack.pop()
            if package == start:
                cycles.append(" -> ".join(path))
                break
            if package in seen:
                continue
            seen.add(package)
            stack.extend((after, [*path, after]) for after in sorted(edges.get(package, ())))
    assert cycles == []


def _documented_ranks() -> dict[str, int]:
    """The rank table of docs/architecture.md: ``| rank | `pkg`, `pkg` | what |`` rows."""
    architecture = (PACKAGE_ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    ranks: dict[str, int] = {}
    for line in architecture.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for package in re.findall(r"`([a-z_0-9]+)`", cells[1]):
                ranks[package] = int(cells[0])
    return ranks


def test_rank_table_is_documented() -> None:
    assert _documented_ranks() == RANKS


def _defines_a_task(path: Path) -> bool:
    """Whether the module decorates a function with ``shared_task`` (or ``app.task``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                if name in ("shared_task", "task"):
                    return True
    return False


def _modules_defining_tasks() -> set[str]:
    """Every module that defines a task, and every slice's ``tasks.py``."""
    return {
        _module_name(path)
        for path in PACKAGE_ROOT.rglob("*.py")
        if path.name == "tasks.py" or _defines_a_task(path)
    }


def test_each_slice_keeps_its_tasks_in_its_tasks_module_and_the_worker_loads_them() -> None:
    from tracker.worker.app import app

    assert _modules_defining_tasks() == set(app.conf.include)


def test_every_package_ships_in_the_wheel() -> None:
    import tomllib

    pyproject = tomllib.loads((PACKAGE_ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = set(pyproject["tool"]["setuptools"]["packages"])
    packages = {
        _module_name(path.parent) for path in PACKAGE_ROOT.rglob("__init__.py")
    }
    assert packages - shipped == set()

"""Database access for CLI commands.

Importing this module is cheap (see tracker.cli.main): SQLAlchemy loads when a command
opens the database, and Alembic (a further 0.1-0.2 s) only when the schema is not
certainly current, which a quick read of the version table and the shipped revision
files decides.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tracker.cli.errors import CLIError
from tracker.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_checked = False


def _assigned(tree: ast.Module, name: str) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return node.value
    return None


def _revisions(tree: ast.Module) -> tuple[str, set[str]]:
    """(revision, the revisions it follows); ValueError unless both are literal."""
    revision = ast.literal_eval(_assigned(tree, "revision") or ast.Constant(None))
    down = ast.literal_eval(_assigned(tree, "down_revision") or ast.Constant(None))
    if not isinstance(revision, str):
        raise ValueError("no literal revision")
    follows = {down} if isinstance(down, str) else set(down or ())
    return revision, follows


def shipped_head(script_location: str) -> str | None:
    """The one head revision of the migration scripts, read without importing Alembic;
    None when there is not exactly one or a script does not name its revisions plainly
    (then Alembic decides)."""
    revisions: set[str] = set()
    followed: set[str] = set()
    try:
        for path in sorted(Path(script_location, "versions").glob("*.py")):
            revision, follows = _revisions(ast.parse(path.read_text(encoding="utf-8")))
            revisions.add(revision)
            followed |= follows
    except (OSError, SyntaxError, ValueError, TypeError):
        return None
    heads = revisions - followed
    return heads.pop() if len(heads) == 1 else None


def _current_revision() -> str | None:
    """The database's one revision, or None (no version table, several rows, ...)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from tracker.db.session import read_only_engine

    try:
        with read_only_engine().connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError:
        return None
    return rows[0] if len(rows) == 1 else None


def _ensure_schema_with_alembic() -> None:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from tracker.db import migrate
    from tracker.db.session import read_only_engine

    config = Config()
    config.set_main_option("script_location", migrate.script_location())
    head = ScriptDirectory.from_config(config).get_current_head()
    with read_only_engine().connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        if not get_settings().local_mode:
            raise CLIError("the database schema is not up to date: run `tracker db upgrade` first")
        migrate.upgrade()


def ensure_schema() -> None:
    """Local mode upgrades the schema on first use; production asks the operator to,
    because there a migration is a deploy step (the Procfile's release, compose's migrate)."""
    global _checked
    if _checked:
        return
    from tracker.db.migrate import script_location

    head = shipped_head(script_location())
    if head is None or _current_revision() != head:
        _ensure_schema_with_alembic()
    _checked = True


@contextmanager
def database(*, read_only: bool = False) -> Iterator[Session]:
    """``read_only`` for commands that only show: they never wait for a worker's write lock."""
    from tracker.db.session import unit_of_work

    ensure_schema()
    with unit_of_work(read_only=read_only) as session:
        yield session


def database_now(session: Session) -> datetime:
    """The database's clock, which every time the tracker stores is on (imported when a
    command runs: `tracker --help` loads no SQLAlchemy)."""
    from tracker.db.clock import database_now as now

    return now(session)

"""Database access for CLI commands.

Importing this module is cheap (see tracker.cli.main): SQLAlchemy loads when a command
opens the database, and Alembic (a further 0.1-0.2 s) only when the schema is not
certainly current, which a quick read of the version table and the shipped revision
files decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from tracker.cli.errors import CLIError
from tracker.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_checked = False


def ensure_schema() -> None:
    """Local mode upgrades the schema on first use; production asks the operator to,
    because there a migration is a deploy step (the Procfile's release, compose's migrate)."""
    global _checked
    if _checked:
        return
    from tracker.db import migrate

    if not migrate.schema_is_current():
        if not get_settings().local_mode:
            raise CLIError("the database schema is not up to date: run `tracker db upgrade` first")
        migrate.upgrade()
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

"""Database access for CLI commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.config import Config
from sqlalchemy.orm import Session

from tracker.cli.errors import CLIError
from tracker.config import get_settings
from tracker.db import migrate
from tracker.db.session import read_only_engine, unit_of_work

_checked = False


def ensure_schema() -> None:
    """Local mode upgrades the schema on first use; production asks the operator to,
    because there a migration is a deploy step (the Procfile's release, compose's migrate)."""
    global _checked
    if _checked:
        return
    config = Config()
    config.set_main_option("script_location", migrate.script_location())
    head = ScriptDirectory.from_config(config).get_current_head()
    with read_only_engine().connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        if not get_settings().local_mode:
            raise CLIError("the database schema is not up to date: run `tracker db upgrade` first")
        migrate.upgrade()
    _checked = True


@contextmanager
def database(*, read_only: bool = False) -> Iterator[Session]:
    """``read_only`` for commands that only show: they never wait for a worker's write lock."""
    ensure_schema()
    with unit_of_work(read_only=read_only) as session:
        yield session

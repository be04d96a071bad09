"""`tracker db upgrade`: apply the Alembic migrations shipped with the package, and tell
whether the database is already at their head."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tracker.config import get_settings, normalize_database_url
from tracker.db.session import get_engine, read_only_engine

if TYPE_CHECKING:
    from alembic.config import Config


def script_location() -> str:
    """Installed from a wheel, the scripts ship inside the package as ``tracker/migrations``.
    In a checkout (editable install, or none) they are the top-level ``alembic/`` folder."""
    package = Path(__file__).resolve().parents[1]
    shipped = package / "migrations"
    if (shipped / "env.py").exists():
        return str(shipped)
    return str(package.parent / "alembic")


def _config() -> Config:
    # Imported here: the CLI finds script_location() without paying for Alembic.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location())
    return config


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


def _current_revision(url: str | None) -> str | None:
    """The database's one revision, or None (no version table, several rows, ...)."""
    try:
        with read_only_engine(url).connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError:
        return None
    return rows[0] if len(rows) == 1 else None


# Databases this process knows to be current: `tracker run` upgrades in a subprocess and
# then forks its workers, which need not open the database again to check.
_known_current: set[str] = set()


def remember_schema_current(url: str) -> None:
    _known_current.add(normalize_database_url(url))


def schema_is_current(url: str | None = None) -> bool:
    """Whether the database is at the shipped migrations' head: a read (no write lock),
    and without Alembic (0.1-0.2 s to import) when the version table and the scripts'
    revision lines decide it."""
    if normalize_database_url(url or get_settings().database_url) in _known_current:
        return True
    head = shipped_head(script_location())
    if head is not None and _current_revision(url) == head:
        return True
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    with read_only_engine(url).connect() as connection:
        return bool(MigrationContext.configure(connection).get_current_revision() == head)


def upgrade(url: str | None = None, revision: str = "head") -> None:
    from alembic import command

    config = _config()
    engine = get_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


# What each database says when a statement names a table or column the schema lacks.
_UNDEFINED_SQLSTATES = {"42P01", "42703"}  # PostgreSQL: undefined table, undefined column
_UNDEFINED_MYSQL_ERRORS = {1146, 1054}  # MySQL/MariaDB: no such table, unknown column
_UNDEFINED_SQLITE_MESSAGES = ("no such table", "no such column")


def says_schema_missing(error: DBAPIError) -> bool:
    """Whether the database refused a statement because a table or column the code uses
    does not exist: the database was never migrated, or is behind this release."""
    original = error.orig
    if getattr(original, "sqlstate", None) in _UNDEFINED_SQLSTATES:
        return True
    arguments = getattr(original, "args", ())
    if arguments and arguments[0] in _UNDEFINED_MYSQL_ERRORS:
        return True
    return str(original).startswith(_UNDEFINED_SQLITE_MESSAGES)


def database_message(error: DBAPIError) -> str:
    """The database's own words, first line, without SQLAlchemy's statement and parameters
    (a parameter may be anything a caller wrote)."""
    original = error.orig
    arguments: tuple[object, ...] = tuple(getattr(original, "args", ()))
    # PyMySQL: (error number, message).
    text = str(arguments[1]) if len(arguments) == 2 and isinstance(arguments[0], int) else str(original)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(original).__name__

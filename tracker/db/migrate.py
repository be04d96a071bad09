"""`tracker db upgrade`: apply the Alembic migrations shipped with the package."""

from __future__ import annotations

from pathlib import Path

from tracker.db.session import get_engine


def script_location() -> str:
    """Installed from a wheel, the scripts ship inside the package as ``tracker/migrations``.
    In a checkout (editable install, or none) they are the top-level ``alembic/`` folder."""
    package = Path(__file__).resolve().parents[1]
    shipped = package / "migrations"
    if (shipped / "env.py").exists():
        return str(shipped)
    return str(package.parent / "alembic")


def upgrade(url: str | None = None, revision: str = "head") -> None:
    # Imported here: the CLI finds script_location() without paying for Alembic.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location())
    engine = get_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

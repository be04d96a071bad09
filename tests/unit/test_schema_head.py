"""The CLI's quick schema check reads the head revision without importing Alembic; it
must name the head Alembic itself finds, or a stale schema would pass for current."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from tracker.db.migrate import shipped_head
from tracker.db import migrate


def alembic_head(location: str) -> str | None:
    config = Config()
    config.set_main_option("script_location", location)
    return ScriptDirectory.from_config(config).get_current_head()


def test_the_shipped_head_is_alembics_head() -> None:
    assert shipped_head(migrate.script_location()) == alembic_head(migrate.script_location())


def write_revision(versions: Path, revision: str, down: str | None) -> None:
    (versions / f"{revision}_step.py").write_text(
        f'"""step"""\nrevision: str = {revision!r}\ndown_revision: str | None = {down!r}\n'
        "def upgrade() -> None:\n    pass\n"
    )


def test_two_heads_or_an_unreadable_script_give_no_head(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    write_revision(versions, "0001", None)
    write_revision(versions, "0002", "0001")
    assert shipped_head(str(tmp_path)) == "0002"
    write_revision(versions, "0003", "0001")
    assert shipped_head(str(tmp_path)) is None
    (versions / "0003_step.py").write_text("revision = compute()\n")
    assert shipped_head(str(tmp_path)) is None

"""Which database errors mean the schema is missing or behind (the worker then names
`tracker db upgrade`), on SQLite itself; PostgreSQL's and MariaDB's words are checked
against their servers in tests/integration/test_plain_celery.py."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from tracker.db.migrate import database_message, says_schema_missing


def error_of(statement: str) -> DBAPIError:
    engine = create_engine("sqlite://")
    with engine.connect() as connection:
        connection.execute(text("CREATE TABLE providers (id INTEGER PRIMARY KEY)"))
        with pytest.raises(DBAPIError) as raised:
            connection.execute(text(statement), {"key": "not-in-the-message"})
    return raised.value


@pytest.mark.parametrize(
    "statement", ["SELECT id FROM orders", "SELECT key_probe_at FROM providers WHERE id = :key"]
)
def test_a_missing_table_or_column_says_the_schema_is_missing(statement: str) -> None:
    error = error_of(statement)
    assert says_schema_missing(error)
    assert database_message(error).startswith("no such")
    assert "not-in-the-message" not in database_message(error)


@pytest.mark.parametrize("statement", ["SELEC id FROM providers", "SELECT 1 / :key FROM nowhere_at_all("])
def test_other_errors_do_not(statement: str) -> None:
    assert not says_schema_missing(error_of(statement))

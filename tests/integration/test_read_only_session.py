"""Read-only units of work: on SQLite a deferred transaction, so reads never queue behind
a writer for the write lock; on every database a write inside one fails loudly."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from tests.integration.helpers import add_provider
from tracker.cli.main import main as tracker_cli
from tracker.db.models import Order
from tracker.db.session import unit_of_work

pytestmark = pytest.mark.integration

URL = "http://127.0.0.1:9/api/v2"
# The reader gets this long while the writer holds the lock; the busy timeout is 30 s, so
# a reader that queued for the write lock would still be waiting.
READER_PATIENCE = 20.0


def sqlite_path(database_url: str) -> Path:
    return Path(database_url.removeprefix("sqlite:///"))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("command", [["orders", "--json"], ["order", "panel", "5", "--json"]])
def test_cli_reads_answer_while_another_process_holds_the_write_lock(
    tracker_env: dict[str, str],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    add_provider("panel", URL, monkeypatch)
    assert tracker_cli(["track", "panel", "5", "7"]) == 0
    capsys.readouterr()
    # A worker in the middle of a batch: it holds SQLite's write lock.
    writer = sqlite3.connect(sqlite_path(database_url), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE orders SET remains = 1")
    outcome: dict[str, Any] = {}

    def read() -> None:
        try:
            outcome["code"] = tracker_cli(command)
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            outcome["error"] = error

    reader = threading.Thread(target=read, daemon=True)
    try:
        reader.start()
        reader.join(READER_PATIENCE)
        assert not reader.is_alive(), f"`tracker {' '.join(command)}` waited for the writer's lock"
    finally:
        writer.rollback()
        writer.close()
        reader.join()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["code"] == 0
    shown = json.loads(capsys.readouterr().out)
    # The reader saw the last committed state, not the writer's change in flight.
    rows = shown if isinstance(shown, list) else [shown]
    assert {row["order_id"] for row in rows} <= {5, 7} and rows
    assert all(row["remains"] is None for row in rows)


def test_a_write_inside_a_read_only_unit_of_work_fails(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    add_provider("panel", URL, monkeypatch)
    assert tracker_cli(["track", "panel", "5"]) == 0
    with pytest.raises(DBAPIError, match="(?i)read.?only"):
        with unit_of_work(read_only=True) as session:
            assert session.scalar(select(Order.external_id)) == 5
            session.execute(update(Order).values(remains=42))
    with pytest.raises(DBAPIError, match="(?i)read.?only"):
        with unit_of_work(read_only=True) as session:
            session.get_one(Order, session.scalar(select(Order.id))).remains = 43
    # Nothing was written, and the pooled connection is an ordinary one again.
    with unit_of_work() as session:
        assert session.scalar(select(Order.remains)) is None
        session.execute(update(Order).values(remains=44))
    with unit_of_work(read_only=True) as session:
        assert session.scalar(select(Order.remains)) == 44

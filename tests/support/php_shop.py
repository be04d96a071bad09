"""A PHP shop for the tests: the real ``php`` interpreter running the kit
(kit/php/TrackerKit.php) and the example shop (examples/php-shop/) against a MariaDB
database of the test's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
from sqlalchemy.engine import make_url

from tests.support import processes
from tests.support.databases import (
    connect_mysql,
    create_mysql_database,
    drop_mysql_database,
    mysql_required,
    mysql_unavailable_reason,
)
from tests.support.network import listening
from tests.support.processes import Proc, wait_until
from tracker.ops.bundled_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "kit" / "php" / "TrackerKit.php"
KIT_CLI = ROOT / "tests" / "php_kit" / "kit_cli.php"
SHOP = ROOT / "examples" / "php-shop"


def php_unavailable_reason() -> str | None:
    php = shutil.which("php")
    if php is None:
        return "php is not installed (Debian: apt-get install php-cli php-mysql)"
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=30).stdout.split()
    if "pdo_mysql" not in modules:
        return "PHP's pdo_mysql module is missing (Debian: apt-get install php-mysql)"
    return None


def require_php() -> None:
    """Skips the test without PHP, or fails it where CI requires PHP (.ci/run installs it)."""
    reason = php_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("TRACKER_REQUIRE_PHP") == "1":
        pytest.fail(f"{reason} (the PHP tests are required in CI)")
    pytest.skip(reason)


def require_mariadb() -> None:
    reason = mysql_unavailable_reason()
    if reason is not None:
        if mysql_required():
            pytest.fail(f"{reason} (MariaDB tests are required in CI)")
        pytest.skip(reason)


def run_kit(calls: list[dict[str, Any]], url: str | None = None, **options: Any) -> tuple[int, Any]:
    """Runs the kit in a ``php`` process (tests/php_kit/kit_cli.php): its exit code and the
    JSON it printed (each call's result, or the error that stopped it)."""
    request = {"calls": calls, **({"url": url} if url else {}), **options}
    completed = subprocess.run(
        ["php", str(KIT_CLI)], input=json.dumps(request), capture_output=True, text=True, timeout=120
    )
    assert completed.stdout.strip(), completed.stderr
    return completed.returncode, json.loads(completed.stdout)


@dataclass
class ShopDatabase:
    url: str

    def connect(self) -> pymysql.connections.Connection[Any]:
        return connect_mysql(self.url)

    def query(self, statement: str, arguments: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        connection = self.connect()
        try:
            with connection.cursor(pymysql.cursors.DictCursor) as cursor:
                cursor.execute(statement, arguments or None)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def execute(self, statement: str, arguments: Any = ()) -> int:
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                if arguments and isinstance(arguments, list):
                    return int(cursor.executemany(statement, arguments) or 0)
                return int(cursor.execute(statement, arguments or None))
        finally:
            connection.close()

    def php_env(self) -> dict[str, str]:
        """The example shop's settings (config.sample.php reads them) for this database."""
        url = make_url(self.url)
        return {
            "SHOP_DB_DSN": f"mysql:host={url.host};port={url.port or 3306};dbname={url.database};charset=utf8mb4",
            "SHOP_DB_USER": url.username or "root",
            "SHOP_DB_PASSWORD": url.password or "",
        }


@contextmanager
def shop_database() -> Iterator[ShopDatabase]:
    """A MariaDB database of the test's own with examples/php-shop/schema.sql loaded."""
    require_mariadb()
    url = create_mysql_database()
    try:
        database = ShopDatabase(url)
        schema = (SHOP / "schema.sql").read_text()
        for statement in schema.split(";\n"):
            if statement.strip() and not all(line.startswith("--") for line in statement.strip().splitlines()):
                database.execute(statement)
        yield database
    finally:
        drop_mysql_database(url)


@contextmanager
def php_receiver(env: dict[str, str], log_dir: Path, workers: int = 4) -> Iterator[tuple[str, Proc]]:
    """examples/php-shop/webhook.php under ``php -S`` (``workers`` processes); its URL."""
    port = free_port()
    full_env = {**os.environ, **env, "PHP_CLI_SERVER_WORKERS": str(workers)}
    # Its own process group: php -S leaves its worker processes running when it is stopped alone.
    proc = processes.start(
        "php-receiver", ["php", "-S", f"127.0.0.1:{port}", str(SHOP / "webhook.php")], full_env, log_dir, group=True
    )
    url = f"http://127.0.0.1:{port}/hooks/tracker"
    try:
        wait_until(lambda: listening(port) or not proc.alive(), timeout=30, what="the PHP receiver")
        assert proc.alive(), proc.output()
        yield url, proc
    finally:
        proc.stop()


def fail_first_application(database: ShopDatabase, condition: str) -> None:
    """Makes the receiver fail halfway through applying an event, the first time only, for
    each event whose order row matches ``condition`` (SQL on ``NEW``, the row as the
    receiver is about to write it): a trigger raises an error at the order's UPDATE, after
    the event was recorded and any refund credited in the same transaction, so all of that
    must roll back. The events it failed are kept in ``injected_faults``, a MyISAM table:
    its rows survive the rollback (MyISAM has no transactions), which is also how the
    trigger knows to let the next delivery through."""
    database.execute("CREATE TABLE injected_faults (event_id CHAR(36) NOT NULL PRIMARY KEY) ENGINE=MyISAM")
    database.execute(
        f"""
        CREATE TRIGGER fail_first_application BEFORE UPDATE ON orders FOR EACH ROW
        BEGIN
          IF NOT (NEW.tracker_event_id <=> OLD.tracker_event_id) AND ({condition})
             AND NOT EXISTS (SELECT 1 FROM injected_faults WHERE event_id = NEW.tracker_event_id) THEN
            INSERT INTO injected_faults (event_id) VALUES (NEW.tracker_event_id);
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected fault: the shop failed halfway';
          END IF;
        END
        """
    )

"""No API key ever leaks: not in a log line, an exception, the CLI's output, Flower, the
broker's messages or the database (where it is stored encrypted).

The full scenario runs a production-mode deployment (worker, beat, Flower with basic
auth), drives it through the CLI and a shop's Celery client, and makes providers fail
in the ways that put keys in front of a careless program: a rejected key, and a
provider that echoes the key back in error pages, JSON errors and mirrored requests.
Then it gathers everything a human or a log shipper could read and looks for the key
in every spelling it may take (raw, URL-encoded, JSON-escaped), whole or in halves.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import binascii
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import psycopg
import pytest
import redis
import requests
from sqlalchemy import select, text

from tests.integration.helpers import count_orders, print_figures, shop_client
from tests.support.databases import SERVER_DATABASES, connect_mysql
from tests.support.cluster import Cluster
from tests.support.echo_provider import EchoProvider
from tests.support.observe import listening_addresses, wait_for_listening
from tests.support.processes import wait_until
from tracker.cli.main import main as tracker_cli
from tracker.config import normalize_database_url, reset_settings
from tracker.db.models import Base, Provider
from tracker.db.session import unit_of_work
from tracker.ops.bundled_redis import free_port
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

# Distinctive, with the characters that change under URL and JSON encoding.
LEAK_KEY = 'sk-LEAK/7Qz+9f2c=1e7a&5b3d%4c8e"x'
OTHER_KEY = "sk-not-the-one-the-panel-wants"
FLOWER_AUTH = ("admin", "flower-pw-1b2c3d")


def spellings(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote_plus(secret, safe=""), json.dumps(secret)[1:-1]}


def leak_needles(secret: str) -> set[str]:
    """The key and long pieces of it, in every spelling. (The masked hint shows the last
    four characters by design; every needle is far longer.)"""
    half = len(secret) // 2
    pieces = {secret, secret[:half], secret[half:]}
    return {spelling for piece in pieces for spelling in spellings(piece)}


def decoded_blobs(text_value: str) -> Iterable[str]:
    """Base64 runs inside a value (kombu stores message bodies base64-encoded)."""
    for match in re.finditer(r"[A-Za-z0-9+/]{24,}={0,2}", text_value):
        blob = match.group(0)
        try:
            yield base64.b64decode(blob + "=" * (-len(blob) % 4)).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            continue


def find_leaks(sources: dict[str, str], secret: str) -> list[str]:
    needles = leak_needles(secret)
    leaks: list[str] = []
    for name, content in sources.items():
        for haystack in (content, *decoded_blobs(content)):
            for needle in needles:
                if needle in haystack:
                    at = haystack.index(needle)
                    leaks.append(f"{name}: {haystack[max(0, at - 80) : at + len(needle) + 20]!r}")
                    break
    return leaks


def redis_dump(url: str) -> str:
    """Every key and value of the broker's database, as text."""
    client = redis.Redis.from_url(url)
    parts: list[str] = []
    try:
        for key in client.scan_iter():
            raw_kind: bytes | str = client.type(key)
            kind = raw_kind.decode() if isinstance(raw_kind, bytes) else raw_kind
            value: Any
            if kind == "string":
                value = client.get(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            else:
                value = kind
            parts.append(f"{key!r} {value!r}")
    finally:
        client.close()
    return "\n".join(parts)


def database_dump() -> str:
    """Every row of every table, as text."""
    parts: list[str] = []
    with unit_of_work() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                parts.append(f"{table.name} {tuple(row)!r}")
    return "\n".join(parts)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


class CLI:
    """Runs ``tracker`` commands and keeps all they printed: as separate processes (what
    an operator runs, with its logging to stderr), or in this process, which is as real
    a code path and saves a second of interpreter start-up per command."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.transcript: list[str] = []

    def _keep(self, arguments: tuple[str, ...], ran: Ran, expect: int | None) -> Ran:
        self.transcript.append(f"$ tracker {' '.join(arguments)}\n{ran.stdout}\n{ran.stderr}")
        if expect is not None:
            assert ran.returncode == expect, (arguments, ran.returncode, ran.stdout, ran.stderr)
        return ran

    def __call__(self, *arguments: str, expect: int | None = 0) -> Ran:
        done = subprocess.run(
            [sys.executable, "-m", "tracker.cli.main", *arguments],
            env=self.env, cwd=self.workdir, capture_output=True, text=True, timeout=60,
        )
        return self._keep(arguments, Ran(done.returncode, done.stdout, done.stderr), expect)

    def here(self, *arguments: str, expect: int | None = 0) -> Ran:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = tracker_cli(list(arguments))
            except SystemExit as exit_:  # argparse
                code = int(exit_.code or 0)
        return self._keep(arguments, Ran(code, out.getvalue(), err.getvalue()), expect)


@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def rejecting_paused() -> bool:
    with unit_of_work() as session:
        return bool(session.scalar(select(Provider.paused).where(Provider.name == "rejecting")))


def test_no_key_leaks_anywhere_in_a_full_scenario(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The detector finds the key in each spelling, in halves, and inside base64.
    for needle in leak_needles(LEAK_KEY):
        assert find_leaks({"probe": f"<{needle}>"}, LEAK_KEY)
    assert find_leaks({"probe": base64.b64encode(json.dumps({"key": LEAK_KEY}).encode()).decode()}, LEAK_KEY)
    flower_port = free_port()
    env = {**tracker_env, "TRACKER_MODE": "production"}
    monkeypatch.setenv("LEAK_KEY", LEAK_KEY)
    cli = CLI({**env, "LEAK_KEY": LEAK_KEY}, tmp_path)
    flower_json: dict[str, str] = {}
    with SimServer(dialect="standard", speed=1.0, seed=41, api_key=LEAK_KEY) as good, SimServer(
        dialect="standard", speed=1.0, seed=42, api_key=OTHER_KEY
    ) as rejecting, EchoProvider() as echo, Cluster(env, tmp_path / "logs") as cluster:
        cli("provider", "add", "good", "--url", good.url, "--key-env", "LEAK_KEY", "--rate-limit", "20")
        cli.here("provider", "add", "rejecting", "--url", rejecting.url, "--key-env", "LEAK_KEY")
        cli.here("provider", "add", "echo", "--url", echo.url, "--key-env", "LEAK_KEY")
        cli.here("provider", "list")
        cli.here("provider", "list", "--json")
        cli.here("provider", "sync", "good")
        assert "services" in cli("-v", "provider", "sync", "echo", expect=1).stderr
        assert "key" in cli("-v", "provider", "sync", "rejecting", expect=1).stderr.lower()

        good_ids = good.seed_orders(count=20, service=1, pending_s=1.0, progress_s=4.0)
        other_ids = rejecting.seed_orders(count=5, service=1)
        # Flower starts while the worker and beat get ready.
        flower = cluster.tracker_command(
            "flower", "flower", f"--port={flower_port}", "--address=127.0.0.1",
            env={**env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
        )
        cluster.worker()
        cluster.beat()
        wait_for_listening(flower.process.pid, timeout=30)

        cli.here("track", "good", *map(str, good_ids[:10]), "--service", "1")
        cli.here("track", "rejecting", *map(str, other_ids))
        cli.here("track", "echo", "101", "102", "103")
        shop = shop_client(broker_url)
        shop.send_task("tracker.track_orders", args=["good", good_ids[10:]])
        # Failing tasks, so Flower holds exceptions and tracebacks too.
        shop.send_task("tracker.report_drop", args=["good", 999_999])
        shop.send_task("tracker.track_orders", args=["good", "1,2"])

        wait_until(lambda: count_orders("good", final=True) == len(good_ids), timeout=60, what="good orders final")
        # The rejecting provider's first poll may come after the good orders are final.
        wait_until(lambda: rejecting_paused(), timeout=30, what="the rejected key pausing its provider")
        with unit_of_work() as session:
            providers = {p.name: p for p in session.scalars(select(Provider))}
        assert providers["rejecting"].paused, "the rejected key paused its provider"
        wait_until(lambda: echo.requests >= 8, timeout=30, what="the echoing provider to be called")

        cli.here("orders")
        cli.here("orders", "--json")
        cli.here("order", "good", str(good_ids[0]), "--json")
        cli.here("order", "echo", "101", "--json")
        # Eligible or not (the sim draws each order's outcome), the drop is recorded.
        assert cli.here("report-drop", "good", str(good_ids[0]), expect=None).returncode in (0, 1)
        cli.here("provider", "list", "--json")
        # A paused provider makes stats exit 1: it reports, with errors, and no key.
        cli.here("stats", expect=1)
        assert "rejecting" in cli.here("stats", "--json", expect=1).stdout

        # Flower: the task list, with arguments, results and exceptions, and one task's details.
        base = f"http://127.0.0.1:{flower_port}"
        assert requests.get(f"{base}/api/tasks", timeout=10).status_code == 401, "Flower without auth must refuse"

        def flower_tasks() -> dict[str, Any]:
            answer = requests.get(f"{base}/api/tasks", auth=FLOWER_AUTH, timeout=10)
            answer.raise_for_status()
            tasks: dict[str, Any] = answer.json()
            return tasks

        wait_until(
            lambda: any(task.get("state") == "FAILURE" for task in flower_tasks().values())
            and any(task.get("name") == "tracker.poll_status_batch" for task in flower_tasks().values()),
            timeout=30, what="Flower to list polls and failures",
        )
        tasks = flower_tasks()
        flower_json["tasks"] = json.dumps(tasks)
        for task_id, task in list(tasks.items())[:200]:
            if task.get("state") == "FAILURE" or task.get("name") == "tracker.poll_status_batch":
                detail = requests.get(f"{base}/api/task/info/{task_id}", auth=FLOWER_AUTH, timeout=10)
                flower_json[f"task {task_id}"] = detail.text
        names = {task.get("name") for task in tasks.values()}
        assert {"tracker.track_orders", "tracker.poll_status_batch", "tracker.dispatch_polls"} <= names
        # Task arguments are IDs only: provider id, claim id, order row ids.
        for task in tasks.values():
            if task.get("name") == "tracker.poll_status_batch" and task.get("args"):
                provider_id, claim_id, row_ids = ast.literal_eval(task["args"])
                assert all(isinstance(value, int) for value in (provider_id, claim_id, *row_ids)), task["args"]
        broker_contents = redis_dump(broker_url)
        cluster.stop_all()
        outputs = cluster.output()

    sources = {
        **{f"log {name}": content for name, content in outputs.items()},
        **{f"cli #{index}": content for index, content in enumerate(cli.transcript)},
        **{f"flower {name}": content for name, content in flower_json.items()},
        "broker": broker_contents,
        "database": database_dump(),
    }
    # The scenario really put the key in front of the tracker: errors were logged.
    worker_log = outputs["worker"]
    assert "provider call failed" in worker_log and "provider paused" in worker_log
    assert "raised unexpected" in worker_log
    leaks = find_leaks(sources, LEAK_KEY)
    assert not leaks, "\n".join(leaks[:10])
    print_figures(
        "secrets",
        {"sources": len(sources), "bytes_scanned": sum(len(content) for content in sources.values()),
         "flower_tasks": len(tasks), "echo_requests": echo.requests, "needles": len(leak_needles(LEAK_KEY))},
    )


def test_keys_at_rest_are_encrypted(tracker_env: dict[str, str], tmp_path: Path) -> None:
    env = {**tracker_env, "LEAK_KEY": LEAK_KEY}
    cli = CLI(env, tmp_path)
    cli("provider", "add", "panel", "--url", "https://panel.example/api/v2", "--key-env", "LEAK_KEY")
    listing = json.loads(cli.here("provider", "list", "--json").stdout)
    assert listing[0]["key"] == "****" + LEAK_KEY[-4:]
    url = normalize_database_url(tracker_env["TRACKER_DATABASE_URL"])
    # Read the table with the database's own driver, not through the tracker's models.
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as connection:
            rows = connection.execute("SELECT * FROM providers").fetchall()
        raw_files = b"".join(Path(name).read_bytes() for name in (path, path + "-wal") if os.path.exists(name))
        assert not any(needle.encode() in raw_files for needle in leak_needles(LEAK_KEY))
    elif url.startswith("mysql"):
        connection = connect_mysql(url)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT * FROM providers")
                rows = list(cursor.fetchall())
        finally:
            connection.close()
    else:
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as connection:
            rows = connection.execute("SELECT * FROM providers").fetchall()
    assert len(rows) == 1
    assert not find_leaks({"providers row": repr(rows)}, LEAK_KEY)
    # What is stored is the key, encrypted: it decrypts with TRACKER_SECRET_KEY.
    from tracker.config import get_settings
    from tracker.providers.secrets import decrypt_api_key

    reset_settings()
    with unit_of_work() as session:
        stored = session.execute(text("SELECT api_key_encrypted FROM providers")).scalar_one()
    assert decrypt_api_key(get_settings(), stored) == LEAK_KEY


@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def test_production_refuses_to_store_a_key_without_an_encryption_key(
    tracker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {name: value for name, value in tracker_env.items() if name != "TRACKER_SECRET_KEY"}
    cli = CLI({**env, "TRACKER_MODE": "production"}, tmp_path)
    monkeypatch.delenv("TRACKER_SECRET_KEY")
    monkeypatch.setenv("LEAK_KEY", LEAK_KEY)
    reset_settings()
    done = cli.here("provider", "add", "panel", "--url", "https://panel.example/api/v2", "--key-env", "LEAK_KEY", expect=None)
    assert done.returncode != 0
    assert "TRACKER_SECRET_KEY is not set" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not find_leaks({"stderr": done.stderr, "stdout": done.stdout}, LEAK_KEY)
    with unit_of_work() as session:
        assert session.scalars(select(Provider)).all() == [], "nothing stored without encryption"
    # Flower, likewise, refuses to start in production without basic auth.
    flower = cli("flower", "--port", str(free_port()), expect=None)
    assert flower.returncode != 0 and "FLOWER_BASIC_AUTH" in flower.stderr, flower.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sim_and_flower_listen_on_loopback_by_default(tracker_env: dict[str, str], tmp_path: Path) -> None:
    local = {**tracker_env, "TRACKER_MODE": "local"}
    with Cluster(local, tmp_path / "logs") as cluster:
        sim = cluster.tracker_command("sim", "sim", "--port", "0")
        flower = cluster.tracker_command("flower", "flower", "--port", str(free_port()))
        sim_addresses = wait_for_listening(sim.process.pid, timeout=20)
        flower_addresses = wait_for_listening(flower.process.pid, timeout=30)
        # Give Flower a moment: it may open more than one listening socket.
        time.sleep(0.5)
        flower_addresses = listening_addresses(flower.process.pid)
    assert {host for host, _ in sim_addresses} == {"127.0.0.1"}, sim_addresses
    assert {host for host, _ in flower_addresses} == {"127.0.0.1"}, flower_addresses

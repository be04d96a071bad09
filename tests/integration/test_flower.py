"""Flower for a deployment: `tracker flower` in production mode, behind basic auth, as the
shop's door from any language (the README's curl example, sent with requests), and as
the monitor that lists every task with arguments made of IDs only."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import add_provider, count_orders, running_tracker
from tests.support import processes
from tests.support.network import answers, listening
from tests.support.processes import wait_until
from tracker.db.models import Order
from tracker.db.session import unit_of_work
from tracker.ops.bundled_redis import free_port
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

AUTH = ("shop", "s3cret-flower-pass")
PROVIDER = "panel"
# Tasks whose events Flower must have seen: the shop's, beat's and the dispatcher's.
EXPECTED_TASKS = {"tracker.track_orders", "tracker.dispatch_polls", "tracker.poll_status_batch"}


def flower_command(port: int) -> list[str]:
    return [sys.executable, "-m", "tracker.cli.main", "flower", "--address", "127.0.0.1", "--port", str(port)]


def leaves(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in leaves(item)]
    return [value]


def is_id_or_name(value: Any) -> bool:
    """Task arguments are IDs (numbers, or digit strings as shops send them), the
    provider's name, or nothing."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return True
    return isinstance(value, str) and (value.isdigit() or value == PROVIDER)


def tracker_tasks(api: str) -> dict[str, dict[str, Any]]:
    listing = requests.get(f"{api}/tasks", auth=AUTH, timeout=10)
    listing.raise_for_status()
    assert TEST_API_KEY not in listing.text
    return {uuid: info for uuid, info in listing.json().items() if str(info.get("name", "")).startswith("tracker.")}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_shop_enqueues_through_flower_with_basic_auth(
    tracker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    flower_env = {**tracker_env, "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    with SimServer(dialect="standard", speed=20.0, seed=41) as sim:
        add_provider(PROVIDER, sim.url, monkeypatch, "--rate-limit", "50")
        ids = sim.seed_orders(count=30, service=1, pending_s=2, progress_s=10)
        flower = processes.start("flower", flower_command(port), flower_env, logs)
        try:
            with running_tracker(tracker_env, logs):
                wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthcheck"), timeout=60, what="Flower up")
                assert flower.alive(), flower.output()
                api = f"http://127.0.0.1:{port}/api"
                enqueue = f"{api}/task/async-apply/tracker.track_orders"
                body = {"args": [PROVIDER, ids[:20]], "kwargs": {"service": 1}}

                assert requests.post(enqueue, json=body, timeout=10).status_code == 401
                assert requests.post(enqueue, json=body, auth=(AUTH[0], "wrong"), timeout=10).status_code == 401
                assert requests.get(f"{api}/tasks", timeout=10).status_code == 401
                assert count_orders(PROVIDER) == 0

                accepted = requests.post(enqueue, json=body, auth=AUTH, timeout=10)
                assert accepted.status_code == 200, accepted.text
                assert accepted.json()["task-id"]
                # Digit strings, no service: what a loosely typed language may send.
                rest = requests.post(enqueue, json={"args": [PROVIDER, [str(i) for i in ids[20:]]]}, auth=AUTH, timeout=10)
                assert rest.status_code == 200, rest.text
                wait_until(lambda: count_orders(PROVIDER, final=True) == len(ids), timeout=60, what="all orders final")
                # Refused IDs beside one tracked already: the reasons are in the task's result, which
                # Flower shows from the worker's task-succeeded event.
                mixed = requests.post(
                    enqueue, json={"args": [PROVIDER, ["12x", ids[0], -5, "sk-0123456789abcdef0123"]]}, auth=AUTH, timeout=10
                )
                assert mixed.status_code == 200, mixed.text
                mixed_id = mixed.json()["task-id"]
                wait_until(
                    lambda: tracker_tasks(api).get(mixed_id, {}).get("state") in ("SUCCESS", "FAILURE"),
                    timeout=30,
                    what="Flower to show the mixed call's outcome",
                )
                shown = tracker_tasks(api)[mixed_id]
                assert shown["state"] == "SUCCESS", shown
                assert ast.literal_eval(shown["result"]) == {
                    "added": 0,
                    "already_tracked": 1,
                    "rejected": 3,
                    "refused": [
                        {"id": "12x", "reason": "is not a positive whole number"},
                        {"id": -5, "reason": "must be a positive number"},
                        {"id": "a string of 23 characters", "reason": "is not a positive whole number"},
                    ],
                }

                wait_until(
                    lambda: EXPECTED_TASKS <= {info["name"] for info in tracker_tasks(api).values()},
                    timeout=30,
                    what=f"Flower to list {sorted(EXPECTED_TASKS)}",
                )
                # The shop's junk arguments aside, every task's arguments are IDs (below).
                tasks = {uuid: info for uuid, info in tracker_tasks(api).items() if uuid != mixed_id}
        finally:
            flower.stop()

    with unit_of_work() as session:
        services = dict(session.execute(select(Order.external_id, Order.service_id)).all())
    assert sorted(services) == sorted(ids)
    assert {services[i] for i in ids[:20]} == {1} and {services[i] for i in ids[20:]} == {None}

    for info in tasks.values():
        arguments = leaves(ast.literal_eval(info["args"])) + leaves(ast.literal_eval(info["kwargs"]))
        assert all(is_id_or_name(value) for value in arguments), info
    shop_calls = [ast.literal_eval(info["args"]) for info in tasks.values() if info["name"] == "tracker.track_orders"]
    assert [PROVIDER, ids[:20]] in shop_calls
    assert all(info["state"] == "SUCCESS" for info in tasks.values() if info["name"] == "tracker.track_orders")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("auth", [None, "no-colon-here"])
def test_flower_without_basic_auth_in_production_refuses_to_start(tracker_env: dict[str, str], auth: str | None) -> None:
    env = {name: value for name, value in tracker_env.items() if name != "FLOWER_BASIC_AUTH"}
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    assert env["TRACKER_MODE"] == "production"
    port = free_port()
    completed = subprocess.run(flower_command(port), env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0
    assert "refusing to start Flower without authentication: set FLOWER_BASIC_AUTH=user:password" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not listening(port)


def command_lines() -> list[str]:
    """Every process's command line, as `ps` shows it to any user of the machine."""
    lines = []
    for entry in Path("/proc").iterdir():
        try:
            lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return lines


def test_local_flower_of_tracker_run_needs_its_password_and_refuses_other_origins(
    broker_url: str, tmp_path: Path
) -> None:
    """`tracker run`'s Flower: a web page in the operator's browser must not be able to
    enqueue tasks (cross-origin POSTs), nor read the API; the operator can, with the
    password `tracker run` prints."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("TRACKER_", "FLOWER_"))}
    env["TRACKER_BROKER_URL"] = broker_url
    port = free_port()
    run = processes.start("run", [sys.executable, "-m", "tracker.cli.main", "run", "--flower-port", str(port)], env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    enqueue = f"{base}/api/task/async-apply/tracker.report_drop"
    body = {"args": ["panel", 5]}
    evil = {"Origin": "http://evil.example"}
    try:
        wait_until(lambda: answers(f"{base}/healthcheck") or not run.alive(), timeout=90, what="Flower of tracker run")
        assert run.alive(), run.output()

        # No credentials: refused, with or without a foreign Origin, and nothing tells a
        # browser that other origins may read the answer.
        anonymous = requests.post(enqueue, json=body, timeout=10)
        assert anonymous.status_code == 401, anonymous.text
        cross_origin = requests.post(enqueue, json=body, headers=evil, timeout=10)
        assert cross_origin.status_code in (401, 403), cross_origin.text
        preflight = requests.options(
            enqueue, headers={**evil, "Access-Control-Request-Method": "POST"}, timeout=10
        )
        for answer in (anonymous, cross_origin, preflight):
            assert answer.headers.get("Access-Control-Allow-Origin") in (None, ""), answer.headers
        assert requests.get(f"{base}/api/tasks", timeout=10).status_code == 401

        # The operator's credentials, printed once, kept in the state directory for them only.
        printed = re.search(r"Flower at http://127\.0\.0\.1:\d+ \(user (\S+), password (\S+)\)", run.output())
        assert printed is not None, run.output()
        auth = (printed.group(1), printed.group(2))
        assert run.output().count(auth[1]) == 1
        stored = tmp_path / ".tracker" / "flower-password"
        assert stored.read_text().strip() == auth[1]
        assert stored.stat().st_mode & 0o077 == 0
        assert not any(auth[1] in line for line in command_lines()), "the password must not be on a command line"

        # With them, a same-origin call works, as a shop's script makes it.
        accepted = requests.post(enqueue, json=body, auth=auth, timeout=10)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["task-id"]
        # Even a browser that attaches the cached credentials cannot post from another origin.
        forged = requests.post(enqueue, json=body, auth=auth, headers=evil, timeout=10)
        assert forged.status_code == 403, forged.text
        assert forged.headers.get("Access-Control-Allow-Origin") in (None, ""), forged.headers
    finally:
        run.process.send_signal(signal.SIGINT)
        try:
            run.process.wait(timeout=60)
        finally:
            run.stop()


HOSTED_FLOWER_HISTORY = """
import json, sys
from tracker.ops.forked import tracker_app
from tracker.ops.hosted import HostedFlower

flower = HostedFlower(tracker_app(), address="127.0.0.1", port=int(sys.argv[1]))
print(json.dumps({"max_tasks": flower._flower.options.max_tasks}))
"""


@pytest.mark.parametrize(("configured", "expected"), [(None, 1000), ("5000", 5000)])
def test_flower_under_tracker_run_keeps_a_bounded_task_history(
    tmp_path: Path, configured: str | None, expected: int
) -> None:
    """Flower keeps every task it has seen in memory, 10,000 by default: about 5 KB each,
    50 MB once an idle `tracker run` has ticked for ten hours, on a host whose whole
    tracker holds 155 MB. Under `tracker run` it keeps the last 1,000 unless the operator
    says otherwise (FLOWER_MAX_TASKS, as for `celery flower`)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TRACKER_", "FLOWER_"))}
    env.update(TRACKER_STATE_DIR=str(tmp_path / "state"), FLOWER_BASIC_AUTH="user:password-of-the-test")
    if configured is not None:
        env["FLOWER_MAX_TASKS"] = configured
    done = subprocess.run(
        [sys.executable, "-c", HOSTED_FLOWER_HISTORY, str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"max_tasks": expected}

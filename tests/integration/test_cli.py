"""The `tracker` command as users run it: clear errors for bad input, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from tests.conftest import TEST_API_KEY
from tests.integration.helpers import add_provider
from tracker.cli.main import main as tracker_cli
from tracker.db.models import Order
from tracker.db.session import unit_of_work

pytestmark = pytest.mark.integration

URL = "http://127.0.0.1:9/api/v2"


def tracked_ids() -> list[int]:
    with unit_of_work() as session:
        return sorted(session.scalars(select(Order.external_id)))


def test_bad_ids_are_refused_one_by_one_and_the_rest_tracked(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_provider("panel", URL, monkeypatch)
    code = tracker_cli(["track", "panel", "5", "abc", "-3", "0", "7", "5", str(10**30), "9223372036854775808"])
    captured = capsys.readouterr()
    assert code == 1
    assert tracked_ids() == [5, 7]
    # 31 digits: no order ID, maybe a numeric secret; named by its length only.
    for given in ("'abc'", "'-3'", "'0'", "a string of 31 characters", "'9223372036854775808'"):
        assert f"rejected {given}" in captured.err
    assert "2 new, 0 already tracked, 5 rejected, 1 duplicates ignored" in captured.out


def test_ids_from_a_file_and_from_stdin(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_provider("panel", URL, monkeypatch)
    listing = tmp_path / "ids.txt"
    listing.write_text("# orders of today\n11, 12 13\n\n14 # a comment 99\n15\n")
    assert tracker_cli(["track", "panel", "--file", str(listing), "--service", "3"]) == 0
    assert tracked_ids() == [11, 12, 13, 14, 15]
    assert "5 new" in capsys.readouterr().out
    completed = subprocess.run(
        [sys.executable, "-m", "tracker.cli.main", "track", "panel", "--file", "-"],
        input=b"13\n16,17\n", capture_output=True, env=tracker_env, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert b"2 new, 1 already tracked" in completed.stdout
    with unit_of_work() as session:
        services = dict(session.execute(select(Order.external_id, Order.service_id)).all())
    assert services[11] == 3 and services[16] is None


def test_a_binary_file_is_refused_before_anything_is_tracked(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_provider("panel", URL, monkeypatch)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 64)
    assert tracker_cli(["track", "panel", "--file", str(blob)]) == 2
    assert "binary" in capsys.readouterr().err
    assert tracked_ids() == []


def test_unknown_provider_and_bad_provider_settings(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_provider("panel", URL, monkeypatch)
    assert tracker_cli(["track", "nope", "1"]) == 1
    assert "unknown provider 'nope' (known providers: panel)" in capsys.readouterr().err
    monkeypatch.setenv("KEY_VAR", TEST_API_KEY)
    assert tracker_cli(["provider", "add", "x", "--url", "ftp://panel", "--key-env", "KEY_VAR"]) == 1
    assert "invalid provider URL" in capsys.readouterr().err
    assert tracker_cli(["provider", "add", "x", "--url", URL, "--key-env", "KEY_VAR", "--batch-size", "101"]) == 1
    assert "batch size must be between 1 and 100" in capsys.readouterr().err
    assert tracker_cli(["provider", "add", "x", "--url", URL, "--key-env", "UNSET_VAR"]) == 2
    assert "UNSET_VAR is not set" in capsys.readouterr().err
    assert tracker_cli(["order", "panel", "abc"]) == 2
    assert "not a positive whole number" in capsys.readouterr().err


def test_provider_list_masks_keys(
    tracker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_provider("panel", URL, monkeypatch, "--rate-limit", "7", "--refill-days", "14")
    capsys.readouterr()
    assert tracker_cli(["provider", "list", "--json"]) == 0
    out = capsys.readouterr().out
    assert TEST_API_KEY not in out
    [view] = json.loads(out)
    assert view["key"] == "****" + TEST_API_KEY[-4:]
    assert (view["rate_limit"], view["refill_days"], view["batch_size"]) == (7.0, 14, 100)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_tracker_run_starts_everything_on_embedded_defaults(tmp_path: Path) -> None:
    """Nothing configured: SQLite in the working directory, the bundled Redis, Flower. The
    start-up line names the broker URL a shop's script needs, and a first run prints no
    warning that asks nothing of the user (Flower inspecting a worker not up yet)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRACKER_")}
    port = _free_port()
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tracker.cli.main", "run", "--flower-port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            try:
                # Local Flower too needs the password `tracker run` generated (test_flower.py).
                password = (tmp_path / ".tracker" / "flower-password").read_text().strip()
                workers = requests.get(
                    f"http://127.0.0.1:{port}/api/workers?refresh=1", auth=("tracker", password), timeout=5
                )
                if workers.ok and workers.json():
                    break
            except (requests.RequestException, FileNotFoundError):
                pass
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.5)
        assert (tmp_path / "tracker.db").exists()
        broker_url = (tmp_path / ".tracker" / "broker-url").read_text().strip()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    output = (tmp_path / "run.log").read_text()
    [started] = [line for line in output.splitlines() if line.startswith("tracker running:")]
    assert f"broker {broker_url} (bundled Redis; also in .tracker/broker-url)" in started, started
    assert "Inspect method" not in output, output[-3000:]
    assert "deprecat" not in output.lower(), output[-3000:]


def test_tracker_run_with_flower_port_taken_says_so_and_stops(tmp_path: Path) -> None:
    """Another program on the Flower port: `tracker run` names the port, stops its worker
    and bundled Redis, exits 1, and never says it is running."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TRACKER_", "FLOWER_"))}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "tracker.cli.main", "run", "--flower-port", str(port)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert f"Flower cannot listen on 127.0.0.1:{port}" in done.stderr, output[-3000:]
    assert "tracker running" not in output
    assert not (tmp_path / ".tracker" / "broker-url").exists()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_tracker_run_stops_at_once_when_its_worker_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the forked worker: `tracker run` hears of it from SIGCHLD, not from its
    next look, says which process died, stops the rest and exits 1; the worker's pool
    children die with it (their parent-death signal), and nothing is left running."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TRACKER_", "FLOWER_"))}
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli.main", "run", "--flower-port", str(_free_port())],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            while "tracker running" not in log_path.read_text():
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            [worker] = [pid for pid in _children(process.pid)
                        if Path(f"/proc/{pid}/comm").read_text().strip() == "tracker-worker"]
            pool_children = _children(worker)
            assert pool_children, "the worker has started no pool child"
            killed = time.monotonic()
            os.kill(worker, signal.SIGKILL)
            code = process.wait(timeout=30)
            stopped_in = time.monotonic() - killed
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    output = log_path.read_text()
    assert code == 1, output[-3000:]
    assert "tracker: worker exited with code -9; stopping" in output, output[-3000:]
    assert stopped_in < 15, (stopped_in, output[-3000:])
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pool_children):
        assert time.monotonic() < deadline, f"pool children left running: {pool_children}"
        time.sleep(0.1)
    assert not (tmp_path / ".tracker" / "broker-url").exists()

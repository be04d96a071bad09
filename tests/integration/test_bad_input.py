"""Bad input, from every door: tasks sent by name from a plain Celery client (what a
shop in another language sends), the CLI, and ID files. Each gets a clear error, and
nothing else is lost: the valid IDs of the same call are tracked, the worker keeps
running, and the next valid task works.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.integration.helpers import add_provider, cli_runner, count_orders, print_figures, shop_client
from tests.support.databases import SERVER_DATABASES
from tests.support.cluster import Cluster
from tests.support.integrity import first_problems, truth_problems
from tests.support.observe import run_measuring_memory
from tests.support.processes import wait_until
from tracker.db.models import Drop, Order, Provider
from tracker.db.session import unit_of_work
from tracker.core.ids import MAX_ORDER_ID
from tracker.sim.server import SimServer

pytestmark = pytest.mark.integration

LONG_AGO = 10_000.0  # sim seconds: orders seeded this old are final at the first poll


def tracked_ids(provider: str) -> set[int]:
    with unit_of_work() as session:
        return set(
            session.scalars(select(Order.external_id).join(Provider).where(Provider.name == provider)).all()
        )


# PostgreSQL and MariaDB: where an ID that slipped through validation would overflow a BIGINT. (The
# CLI test below runs the same ID checks on both backends.)
@pytest.mark.parametrize("database_url", SERVER_DATABASES, indirect=True)
def test_malformed_tasks_fail_clearly_and_the_worker_keeps_going(
    tracker_env: dict[str, str], broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SimServer(dialect="standard", speed=1.0, seed=31) as sim, Cluster(tracker_env, tmp_path / "logs") as cluster:
        add_provider("panel", sim.url, monkeypatch, "--rate-limit", "50")
        v1, v2, v3, v4, v5, v6 = sim.seed_orders(count=6, service=1, age_s=LONG_AGO)
        worker = cluster.worker()
        cluster.beat()
        shop = shop_client(broker_url)
        send = shop.send_task

        # Invalid IDs beside valid ones (and duplicates): the valid ones are tracked.
        send("tracker.track_orders", args=["panel", [
            "12x", "-5", "0", str(10**30), 10**30, "", "  ", -7, 0, 1.5, None, True, [3], {"id": 1},
            v1, v1, str(v2), f" {v2} ",
        ]])
        # Malformed calls, as another language's client may send them.
        send("tracker.track_orders", args=["panel", f"{v3},{v4}"])  # a string, not a list
        send("tracker.track_orders")  # no arguments at all
        send("tracker.track_orders", args=[123, [v3]])  # the provider is not a string
        send("tracker.track_orders", args=["panel", [v3]], kwargs={"bogus": 1})  # unknown kwarg
        send("tracker.track_orders", args=["nope", [v3]])  # unknown provider
        send("tracker.track_orders", args=["panel", [v3]], kwargs={"service": "abc"})
        send("tracker.track_orders", args=["panel", [v3]], kwargs={"service": 10**30})
        send("tracker.report_drop", args=["panel", "abc"])
        send("tracker.report_drop", args=["panel", 999_999])
        send("tracker.report_drop", args=["panel"])
        # A huge list: 200,000 junk entries and one valid ID at the end.
        huge = 200_000
        send("tracker.track_orders", args=["panel", ["x"] * huge + [v4]])
        started = time.monotonic()

        expected_in_log = [
            # The rejected IDs, each with its reason.
            "rejected order ID '12x': is not a positive whole number",
            "rejected order ID '-5': is not a positive whole number",
            # A digit string of 31 characters is named by its length; a number as sent.
            "rejected order ID a string of 31 characters: is too large for an order ID",
            f"rejected order ID {10**30}: is too large for an order ID",
            "rejected order ID '': is empty",
            "rejected order ID -7: must be a positive number",
            "rejected order ID 0: must be a positive number",
            "rejected order ID 1.5: has type float",
            "rejected order ID None: has type NoneType",
            "rejected order ID True: is a boolean",
            "rejected order ID [3]: has type list",
            "2 new, 0 already tracked, 14 rejected, 2 duplicates ignored",
            # The malformed calls fail with a reason.
            "order_ids must be a list of order IDs, got str",
            "missing 2 required positional arguments: 'provider' and 'order_ids'",
            "unknown provider '123' (known providers: panel)",
            "unexpected keyword argument 'bogus'",
            "unknown provider 'nope' (known providers: panel)",
            "service 'abc' is not a positive whole number",
            f"service {10**30} is too large for an order ID",
            "order ID 'abc' is not a positive whole number",
            "order 999999 of panel is not tracked",
            "missing 1 required positional argument: 'order_id'",
            f"1 new, 0 already tracked, {huge} rejected",
        ]

        def logged() -> list[str]:
            text = worker.output()
            return [line for line in expected_in_log if line not in text]

        try:
            wait_until(lambda: not logged(), timeout=60, what="every bad task handled")
        except TimeoutError:
            pytest.fail(f"not in the worker log: {logged()}\n--- worker log tail:\n{worker.output()[-4000:]}")
        handled = time.monotonic() - started
        assert worker.alive(), "the worker died"
        # The next valid task still works, and its orders are polled to the end.
        send("tracker.track_orders", args=["panel", [v5, str(v6)]])
        valid = [v1, v2, v4, v5, v6]
        wait_until(lambda: count_orders("panel", final=True) == len(valid), timeout=30, what="valid orders final")
        assert tracked_ids("panel") == set(valid), "only the valid IDs are tracked; v3 never was"
        wrong = truth_problems("panel", sim, valid)
        assert not wrong, first_problems(wrong)
        text = worker.output()
        # The huge call's log lists the first rejections, not 200,000 lines of them.
        assert text.count("rejected order ID 'x'") <= 20
        assert "WorkerLostError" not in text
        assert worker.alive()
    print_figures(
        f"bad tasks {tracker_env['TRACKER_DATABASE_URL'].split(':')[0].split('+')[0]}",
        {"bad_tasks": 12, "huge_list": huge, "seconds_to_handle_all": round(handled, 1)},
    )


def test_bad_cli_input_is_refused_clearly(
    tracker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = cli_runner(capsys)

    with SimServer(dialect="standard", speed=1.0, seed=32) as sim:
        add_provider("panel", sim.url, monkeypatch)
        assert run("provider", "sync", "panel")[0] == 0
        ids = sim.seed_orders(count=3, service=1, age_s=LONG_AGO)

    # IDs: each refusal named with its reason; the valid ones tracked anyway (exit 1).
    code, out, err = run("track", "panel", "12x", "-5", "0", str(10**30), "", str(ids[0]), str(ids[0]), str(ids[1]))
    assert code == 1
    for given, reason in [
        ("'12x'", "is not a positive whole number"),
        ("'-5'", "is not a positive whole number"),
        ("'0'", "must be a positive number"),
        ("a string of 31 characters", "is too large for an order ID"),
        ("''", "is empty"),
    ]:
        assert f"rejected {given}: {reason}" in err, (given, err)
    assert "2 new, 0 already tracked, 5 rejected, 1 duplicates ignored" in out
    assert tracked_ids("panel") == {ids[0], ids[1]}

    # The largest valid ID is accepted, one more is not.
    code, out, err = run("track", "panel", str(MAX_ORDER_ID), str(MAX_ORDER_ID + 1))
    assert code == 1 and f"rejected '{MAX_ORDER_ID + 1}': is too large" in err
    assert MAX_ORDER_ID in tracked_ids("panel")

    # An unknown provider, named with the known ones.
    code, out, err = run("track", "nope", str(ids[2]))
    assert code == 1 and "unknown provider 'nope' (known providers: panel)" in err
    assert ids[2] not in tracked_ids("panel")

    # A binary file: refused as such, not read as IDs; an empty file tracks nothing.
    binary = tmp_path / "ids.bin"
    binary.write_bytes(bytes(range(256)) * 64)
    code, out, err = run("track", "panel", "--file", str(binary))
    assert code == 2 and ("not UTF-8 text" in err or "binary" in err), err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing here\n\n")
    assert run("track", "panel", "--file", str(empty))[0] == 0
    code, out, err = run("track", "panel", "--file", str(tmp_path / "missing.txt"))
    assert code == 2 and "cannot read" in err
    code, out, err = run("track", "panel")
    assert code == 2 and "give order IDs" in err

    # Provider settings: an invalid URL, a batch size over 100.
    monkeypatch.setenv("OTHER_KEY", "sk-other-0123456789")
    for url in ("ftp://panel.example/api/v2", "not a url", "https://user:pw@panel.example/api/v2"):
        code, out, err = run("provider", "add", "other", "--url", url, "--key-env", "OTHER_KEY")
        assert code == 1 and "URL" in err, (url, err)
    code, out, err = run("provider", "add", "other", "--url", "https://panel.example/api/v2",
                         "--key-env", "OTHER_KEY", "--batch-size", "101")
    assert code == 1 and "batch size must be between 1 and 100" in err, err
    code, out, err = run("provider", "add", "other", "--url", "https://panel.example/api/v2", "--key-env", "UNSET_VAR")
    assert code == 2 and "UNSET_VAR is not set" in err
    with unit_of_work() as session:
        assert session.scalars(select(Provider.name)).all() == ["panel"], "nothing half-registered"

    # A drop of an order whose service is not in the catalog: recorded, not eligible,
    # and the command says why (exit 1).
    code, out, err = run("track", "panel", str(ids[2]), "--service", "999")
    assert code == 0
    code, out, err = run("report-drop", "panel", str(ids[2]))
    assert code == 1 and "service 999 is not in the provider's catalog" in err, err
    code, out, err = run("report-drop", "panel", "abc")
    assert code == 2 and "is not a positive whole number" in err
    with unit_of_work() as session:
        drops = session.scalars(select(Drop)).all()
    assert [(drop.eligible, "service 999" in (drop.reason or "")) for drop in drops] == [(False, True)]


GIB = 1 << 30
MEMORY_LIMIT = 300 * 1024 * 1024


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_1gb_id_file_is_streamed_in_bounded_memory(
    tracker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < 5 * GIB:
        pytest.skip(f"needs 5 GB free in {tmp_path}, has {free / GIB:.1f} GB")
    add_provider("panel", "http://127.0.0.1:9/api/v2", monkeypatch)
    # 1 GiB of text: per MiB, a few valid IDs, a bad token and a comment, padded with
    # separators; and, early on, 16 MiB of digits with no separator at all.
    path = tmp_path / "ids.txt"
    block = 1 << 20
    valid: set[int] = set()
    bad: list[str] = []
    with path.open("w", encoding="ascii") as handle:
        for index in range(GIB // block):
            if index == 5:
                handle.write("7" * (16 * block))
                handle.write("\n")
                continue
            head = f"{1_000_000 + index * 3},{1_000_001 + index * 3} {1_000_002 + index * 3}\nbad{index}\n# note {index}\n"
            valid.update(1_000_000 + index * 3 + k for k in range(3))
            bad.append(f"bad{index}")
            # Separators in lines of 4 KiB, the last one cut to fill the MiB exactly.
            line = ", ;\t" * 1023 + "\n"
            filler = (line * (block // len(line) + 1))[: block - len(head) - 1]
            handle.write(head + filler + "\n")
    size = path.stat().st_size
    assert size >= GIB
    try:
        run = run_measuring_memory(
            [sys.executable, "-m", "tracker.cli.main", "track", "panel", "--file", str(path)],
            tracker_env,
            tmp_path / "cli",
            timeout=180,
        )
    finally:
        path.unlink()
    assert run.returncode == 1, run.stderr[-2000:]
    summary = re.search(r"(\d+) new, 0 already tracked, (\d+) rejected", run.stdout)
    assert summary is not None, run.stdout
    added, rejected = int(summary[1]), int(summary[2])
    assert added == len(valid)
    # Every "badN" line, plus the digit run (cut into pieces, each refused as too large).
    assert len(bad) < rejected <= len(bad) + 16, rejected
    assert "rejected 'bad0': is not a positive whole number" in run.stderr
    assert "is too large for an order ID" in run.stderr
    assert "more rejected" in run.stderr
    assert tracked_ids("panel") == valid
    assert run.peak_rss_bytes < MEMORY_LIMIT, f"peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB"
    print_figures(
        "1 GiB ID file",
        {"bytes": size, "valid_ids": len(valid), "seconds": round(run.seconds, 1),
         "peak_rss_mib": round(run.peak_rss_bytes / 2**20)},
    )

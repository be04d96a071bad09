"""A real PHP interpreter serving the project's own small panel (tests/php_panel/), with
PHP's built-in defaults (`php -n -S`): display_errors on, output_buffering off. What it
answers is what a CodeIgniter panel in development mode sends: PHP's own deprecations and
header/session warnings around the JSON (see tests/php_panel/index.php).

``PhpPanel`` writes the panel's state (its key, its orders) in a directory of the test's
and starts ``php -S`` with a few workers (``PHP_CLI_SERVER_WORKERS``); leaving the block
stops it. Debian's ``php-cli`` provides ``php`` (.ci/run installs it when missing).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests

from tests.support import processes
from tests.support.network import listening
from tracker.ops.bundled_redis import free_port

PANEL_DIR = Path(__file__).resolve().parents[1] / "php_panel"
# The error views the panel can show: CodeIgniter's blocks, or PHP's own HTML.
ERROR_VIEWS = ("codeigniter", "php")


def php_binary() -> str | None:
    return shutil.which("php")


@dataclass(frozen=True)
class PanelOrder:
    """One order of the panel, and the timeline it follows from its creation."""

    order_id: int
    quantity: int = 1000
    charge: str = "0.90000"
    start_count: int = 3572
    pending_s: float = 1.0
    progress_s: float = 3.0
    final: str = "Completed"
    partial_remains: int = 157
    service: int = 1

    @property
    def final_remains(self) -> int:
        return {"Completed": 0, "Partial": self.partial_remains, "Canceled": self.quantity}[self.final]


class PhpPanel:
    def __init__(
        self,
        state_dir: Path,
        api_key: str,
        *,
        errors: str = "codeigniter",
        shutdown_header: bool = False,
        single_forms: bool = False,
        workers: int = 4,
    ) -> None:
        if errors not in ERROR_VIEWS:
            raise ValueError(f"errors is one of {ERROR_VIEWS}")
        self.state_dir = state_dir
        self.port = free_port()
        self._settings: dict[str, Any] = {
            "api_key": api_key, "errors": errors, "shutdown_header": shutdown_header, "single_forms": single_forms,
        }
        self._workers = workers
        self._proc: processes.Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2"

    def __enter__(self) -> Self:
        php = php_binary()
        if php is None:
            raise RuntimeError("php is not installed (Debian: apt-get install php-cli)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_settings()
        (self.state_dir / "orders.json").write_text(json.dumps({"orders": {}}))
        (self.state_dir / "refills.json").write_text("{}")
        (self.state_dir / "calls.log").write_text("")
        env = {**os.environ, "PHP_PANEL_STATE": str(self.state_dir), "PHP_CLI_SERVER_WORKERS": str(self._workers)}
        command = [php, "-n", "-S", f"127.0.0.1:{self.port}", "-t", str(PANEL_DIR), str(PANEL_DIR / "index.php")]
        # Its own process group: php -S leaves its worker processes running when it is stopped alone.
        self._proc = processes.start("php-panel", command, env, self.state_dir, cwd=PANEL_DIR, group=True)
        deadline = time.monotonic() + 20
        while not listening(self.port):
            if not self._proc.alive() or time.monotonic() > deadline:
                self._proc.stop()
                raise RuntimeError(f"php -S did not start:\n{self._proc.output()[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._proc is not None:
            self._proc.stop()

    def _write_settings(self) -> None:
        staged = self.state_dir / "config.json.new"
        staged.write_text(json.dumps(self._settings))
        staged.replace(self.state_dir / "config.json")  # atomic: a worker never reads half a file

    def accept_key(self, api_key: str) -> None:
        """From the next call on, the panel accepts ``api_key`` (and no other)."""
        self._settings["api_key"] = api_key
        self._write_settings()

    def seed(self, orders: list[PanelOrder]) -> list[int]:
        """Create ``orders`` now: their timelines start at this moment."""
        now = time.time()
        data = json.loads((self.state_dir / "orders.json").read_text())
        for order in orders:
            entry = asdict(order)
            entry.pop("order_id")
            data["orders"][str(order.order_id)] = {**entry, "created_at": now}
        staged = self.state_dir / "orders.json.new"
        staged.write_text(json.dumps(data))
        staged.replace(self.state_dir / "orders.json")
        return [order.order_id for order in orders]

    def calls(self, action: str | None = None, since: float = 0.0) -> list[float]:
        """When the panel received each call (of ``action``), in the Unix time of this host."""
        times = []
        for line in (self.state_dir / "calls.log").read_text().splitlines():
            stamp, _, name = line.partition(" ")
            if (action is None or name == action) and float(stamp) >= since:
                times.append(float(stamp))
        return times

    def post(self, **form: str) -> requests.Response:
        """One raw call, as the tracker makes it."""
        return requests.post(self.url, data=form, timeout=10)

    def server_log(self) -> str:
        return self._proc.output() if self._proc is not None else ""

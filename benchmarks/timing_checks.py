"""Timings the tests used to assert, printed instead: they are figures of the machine, not
of the code's correctness (the tests now assert the behaviour behind each).

- rate limit: 8 threads in 2 limiters (2 Redis connections) make CALLS status calls to the
  sim at RATE req/s; the wall time against the ideal ``(CALLS - 1) * (1 + margin) / RATE``
  and the busiest one-second window the sim counted (ideally close to RATE, never above).
  Was tests/integration/test_rate_limit.py.
- seeding a million orders into the sim over its admin API. Was tests/integration/test_sim.py
  (under 15 s).
- a read timeout of 0.2 s against an answer 1 s late: how soon ProviderTimeout comes.
  Was tests/unit/test_client_http.py (under 0.9 s).

Each is run N times (default 3) and the median printed. Needs Redis (TRACKER_TEST_REDIS_URL,
default redis://127.0.0.1:6379) and uses a database number claimed like the tests do.

    python benchmarks/timing_checks.py
    python benchmarks/timing_checks.py --runs 5
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.http_server import serving  # noqa: E402
from tests.support.rate_limit_load import rate_limited_status_calls  # noqa: E402
from tests.support.redis_db import REDIS_BASE_URL, claim_database, release_database  # noqa: E402
from tracker.apiv2.client import ProviderClient  # noqa: E402
from tracker.apiv2.errors import ProviderTimeout  # noqa: E402
from tracker.providers.ratelimit import ARRIVAL_MARGIN  # noqa: E402
from tracker.sim import SimAdmin, SimServer  # noqa: E402

KEY = "bench-key-timing-7c1e"
RATE = 20.0
CALLS = 70


def rate_limit_run(broker_url: str, provider_id: int) -> tuple[float, int]:
    result = rate_limited_status_calls(KEY, broker_url, provider_id, RATE, CALLS, join_timeout=120)
    return result.seconds, int(result.status_stats["max_calls_in_any_1s_window"])


def seed_million_run() -> float:
    with SimServer(dialect="standard", api_key=KEY, seed=3) as sim:
        started = time.monotonic()
        SimAdmin(sim.base_url).seed_orders(count=1_000_000)
        return time.monotonic() - started


class _LateHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(1.0)  # on purpose: the answer is later than the client's read timeout
        body = b"{}"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up, as it should

    def log_message(self, format: str, *args: object) -> None:
        pass


def read_timeout_run() -> float:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LateHandler)
    server.daemon_threads = True
    with serving(server) as base_url, ProviderClient(f"{base_url}/api/v2", KEY, timeout=(1.0, 0.2), retries=0) as client:
        started = time.monotonic()
        try:
            client.status(1)
        except ProviderTimeout:
            return time.monotonic() - started
        raise RuntimeError("expected a ProviderTimeout")


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    number = claim_database(REDIS_BASE_URL)
    try:
        broker_url = f"{REDIS_BASE_URL}/{number}"
        results = [rate_limit_run(broker_url, provider_id) for provider_id in range(1, args.runs + 1)]
    finally:
        release_database(REDIS_BASE_URL, number)
    ideal = (CALLS - 1) * (1 + ARRIVAL_MARGIN) / RATE
    elapsed = statistics.median(result[0] for result in results)
    busiest = statistics.median(result[1] for result in results)
    print(f"rate limit, {CALLS} calls at {RATE:g}/s from 8 threads in 2 limiters:")
    print(f"  wall time            {elapsed:6.2f} s (ideal {ideal:.2f} s; the test allowed {ideal * 0.98:.2f}-{ideal + 1.5:.2f})")
    print(f"  busiest 1 s window   {busiest:6g} calls (limit {RATE:g}; the test expected >= {RATE - 2:g})")
    print(f"seed 1,000,000 sim orders      {median_of(args.runs, seed_million_run):6.2f} s (the test allowed < 15)")
    print(f"read timeout 0.2 s, answer 1 s {median_of(args.runs, read_timeout_run):6.2f} s (the test allowed < 0.9)")
    print(f"(median of {args.runs} runs)")


if __name__ == "__main__":
    main()

"""How long reading an answer among PHP diagnostics takes (``strip_php_notices`` and the
parser after it), for real answers of the project's PHP panel grown to 80 KB, and for
hostile bodies made to make a careless scanner backtrack. The scan is linear: time per
KB stays flat as bodies grow.

Two figures per body: the parser alone on the raw text (``parse ms``), and a
``ProviderClient`` call answered with it from memory (``client ms``: the client's whole
path, its HTTP machinery included, over a ``requests`` transport, no socket), with the
number of diagnostic blocks that call read (``blocks``): each block once when every body
is scanned once.

    python benchmarks/php_noise.py
    python benchmarks/php_noise.py --runs 200

It prints figures and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracker.apiv2 import parsing, php_noise  # noqa: E402
from tracker.apiv2.client import ProviderClient  # noqa: E402
from tracker.testing import Scripted, ScriptedPanel  # noqa: E402

ANSWERS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "php"
TARGET = 80 * 1024
KEY = "benchmark-key-0123456789abcdef"
FATAL = (
    "<br />\n<b>Fatal error</b>:  Uncaught RuntimeException: SMTP down in /var/www/panel/api.php:8\n"
    "Stack trace:\n#0 {main}\n  thrown in <b>/var/www/panel/api.php</b> on line <b>8</b><br />\n"
)


def _parts(name: str) -> tuple[str, str, str]:
    """A real answer as (diagnostics before its JSON, the JSON, what follows it)."""
    body = (ANSWERS / name).read_text(encoding="utf-8")
    start = body.index("{")
    end = body.index("}}", start) + 2 if body[start:].startswith('{"7"') else body.index("}", start) + 1
    return body[:start], body[start:end], body[end:]


def _grown(name: str, target: int, then: str = "") -> str:
    """A real answer with its diagnostics repeated until the body reaches ``target``;
    ``then`` goes between them and the JSON."""
    before, document, after = _parts(name)
    copies = max(1, (target - len(document) - len(after)) // len(before))
    return before * copies + then + document + after


def _status_json(ids: int) -> str:
    entry = '"{0}":{{"charge":"0.27819","start_count":"3572","status":"Partial","remains":"157","currency":"USD"}}'
    return "{" + ",".join(entry.format(order_id) for order_id in range(1, ids + 1)) + "}"


@dataclass(frozen=True)
class Case:
    body: str
    parse: Callable[[str], object]
    call: Callable[[ProviderClient], object]
    status: int = 200


def _status_multi(client: ProviderClient) -> object:
    return client.status_multi([7, 8, 9])


def _status(client: ProviderClient) -> object:
    return client.status(7)


def bodies() -> dict[str, Case]:
    size = TARGET
    multi, single = parsing.parse_status_multi, parsing.parse_status
    return {
        "clean 100-ID status answer": Case(_status_json(100), multi, _status_multi),
        "real CodeIgniter answer": Case((ANSWERS / "codeigniter_status_multi.txt").read_text(), multi, _status_multi),
        "CodeIgniter blocks, 80 KB": Case(_grown("codeigniter_status_multi.txt", size), multi, _status_multi),
        "CodeIgniter blocks, 80 KB, then a fatal": Case(
            _grown("codeigniter_status_multi.txt", size, then=FATAL), multi, _status_multi),
        "CodeIgniter blocks, 80 KB, key refused, 401": Case(
            _grown("codeigniter_invalid_key.txt", size), single, _status, status=401),
        "PHP HTML diagnostics, 80 KB": Case(_grown("php_html_status.txt", size), single, _status),
        "PHP HTML diagnostics, 800 KB": Case(_grown("php_html_status.txt", 10 * size), single, _status),
        "hostile: a warning head, no tail": Case("<b>Warning</b>:  " + "x" * size + "{}", single, _status),
        "hostile: unclosed divs": Case("<div>" * (size // 5) + "{}", single, _status),
        "hostile: plain lines, no ending": Case(("Warning: a in b\n" * (size // 16)) + "{}", single, _status),
        "hostile: <br /> then spaces": Case("<br />" + " " * size + "{}", single, _status),
        "hostile: notices, then 80 KB of [": Case(
            "<br />\n<b>Notice</b>:  x in <b>f</b> on line <b>1</b><br />\n" + "[" * size, single, _status),
    }


def _median_seconds(action: Callable[[], object], runs: int) -> float:
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            action()
        except Exception:  # noqa: BLE001 - hostile bodies are refused: that is the point
            pass
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def _client(case: Case, runs: int) -> tuple[ProviderClient, ScriptedPanel]:
    panel = ScriptedPanel(KEY)
    panel.script(*[Scripted(case.status, case.body.encode(), {"Content-Type": "text/html"})] * runs)
    session = requests.Session()
    session.mount("http://", panel)
    return ProviderClient("http://panel.invalid/api/v2", KEY, retries=0, session=session), panel


def blocks_read(case: Case) -> int:
    """How many diagnostic blocks one client call reads (php_noise's block reader, counted)."""
    reader = php_noise._block_at
    count = 0

    def counted(body: str, start: int) -> object:
        nonlocal count
        count += 1
        return reader(body, start)

    client, _ = _client(case, 1)
    php_noise._block_at = counted  # type: ignore[assignment]
    try:
        case.call(client)
    except Exception:  # noqa: BLE001
        pass
    finally:
        php_noise._block_at = reader
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    print(f"{'body':44} {'KB':>7} {'blocks':>7} {'verdict':>10} {'parse ms':>9} {'µs/KB':>7} "
          f"{'client ms':>10} {'read':>5}")
    for name, case in bodies().items():
        salvaged = parsing.strip_php_notices(case.body)
        verdict = salvaged.severity or ("refused" if salvaged.refusal else "as is")
        parse_seconds = _median_seconds(lambda: case.parse(case.body), args.runs)
        client, _ = _client(case, args.runs)
        client_seconds = _median_seconds(lambda: case.call(client), args.runs)
        kb = len(case.body.encode()) / 1024
        print(
            f"{name:44} {kb:7.1f} {salvaged.diagnostics:7d} {verdict:>10} {parse_seconds * 1000:9.3f} "
            f"{parse_seconds * 1e6 / kb:7.1f} {client_seconds * 1000:10.3f} {blocks_read(case):5d}"
        )
    print(f"(median of {args.runs} runs; blocks: salvaged; read: blocks one client call read)")


if __name__ == "__main__":
    main()

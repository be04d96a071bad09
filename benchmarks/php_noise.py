"""How long reading an answer among PHP diagnostics takes (``strip_php_notices`` and the
parser after it), for real answers of the project's PHP panel grown to 80 KB, and for
hostile bodies made to make a careless scanner backtrack. The scan is linear: time per
KB stays flat as bodies grow.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracker.apiv2 import parsing  # noqa: E402

ANSWERS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "php"
TARGET = 80 * 1024


def _grown(name: str, target: int) -> str:
    """A real answer with its diagnostics repeated until the body reaches ``target``."""
    body = (ANSWERS / name).read_text(encoding="utf-8")
    start = body.index("{")
    end = body.index("}}", start) + 2 if body[start:].startswith('{"7"') else body.index("}", start) + 1
    before, document, after = body[:start], body[start:end], body[end:]
    copies = max(1, (target - len(document) - len(after)) // len(before))
    return before * copies + document + after


def _status_json(ids: int) -> str:
    entry = '"{0}":{{"charge":"0.27819","start_count":"3572","status":"Partial","remains":"157","currency":"USD"}}'
    return "{" + ",".join(entry.format(order_id) for order_id in range(1, ids + 1)) + "}"


def bodies() -> dict[str, tuple[str, Callable[[str], object]]]:
    size = TARGET
    return {
        "clean 100-ID status answer": (_status_json(100), parsing.parse_status_multi),
        "real CodeIgniter answer": ((ANSWERS / "codeigniter_status_multi.txt").read_text(), parsing.parse_status_multi),
        "CodeIgniter blocks, 80 KB": (_grown("codeigniter_status_multi.txt", size), parsing.parse_status_multi),
        "PHP HTML diagnostics, 80 KB": (_grown("php_html_status.txt", size), parsing.parse_status),
        "PHP HTML diagnostics, 800 KB": (_grown("php_html_status.txt", 10 * size), parsing.parse_status),
        "hostile: a warning head, no tail": ("<b>Warning</b>:  " + "x" * size + "{}", parsing.parse_status),
        "hostile: unclosed divs": ("<div>" * (size // 5) + "{}", parsing.parse_status),
        "hostile: plain lines, no ending": (("Warning: a in b\n" * (size // 16)) + "{}", parsing.parse_status),
        "hostile: <br /> then spaces": ("<br />" + " " * size + "{}", parsing.parse_status),
        "hostile: notices, then 80 KB of [": (
            "<br />\n<b>Notice</b>:  x in <b>f</b> on line <b>1</b><br />\n" + "[" * size, parsing.parse_status),
    }


def timed(body: str, parse: Callable[[str], object], runs: int) -> float:
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            parse(body)
        except Exception:  # noqa: BLE001 - hostile bodies are refused: that is the point
            pass
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    print(f"{'body':40} {'KB':>7} {'blocks':>7} {'verdict':>10} {'ms':>8} {'µs/KB':>7}")
    for name, (body, parse) in bodies().items():
        salvaged = parsing.strip_php_notices(body)
        verdict = salvaged.severity or ("refused" if salvaged.refusal else "as is")
        seconds = timed(body, parse, args.runs)
        kb = len(body.encode()) / 1024
        print(f"{name:40} {kb:7.1f} {salvaged.diagnostics:7d} {verdict:>10} {seconds * 1000:8.3f} {seconds * 1e6 / kb:7.1f}")
    print(f"(median of {args.runs} runs, strip and parse together)")


if __name__ == "__main__":
    main()

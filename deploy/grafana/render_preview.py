"""Draw a picture of tracker-dashboard.json's panels from a live Prometheus, without Grafana.

Grafana is not packaged for Debian, so docs/dashboard.png is made with this: it reads the
dashboard JSON, runs each panel's PromQL against Prometheus' HTTP API (range queries for
time series, the last value for stats) and lays the panels out on the dashboard's own
24-column grid with matplotlib. Same queries, same layout; Grafana's styling is not
reproduced.

    pip install matplotlib requests
    python deploy/grafana/render_preview.py --prometheus http://127.0.0.1:9090 --minutes 3 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import requests  # noqa: E402

DASHBOARD = Path(__file__).with_name("tracker-dashboard.json")
ROW_HEIGHT_PX = 30


def promql(expr: str) -> str:
    return expr.replace("$provider", ".*")


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    answer = requests.get(
        f"{base}/api/v1/query_range", params={"query": promql(expr), "start": start, "end": end, "step": step}, timeout=30
    ).json()
    if answer.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template or ", ".join(f"{k}={v}" for k, v in labels.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--end", type=float, help="Unix time of the window's end (default now)")
    parser.add_argument("--out", default="docs/dashboard.png")
    args = parser.parse_args()
    dashboard = json.loads(DASHBOARD.read_text())
    end = args.end or time.time()
    start = end - args.minutes * 60
    step = max(1.0, (end - start) / 200)
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    scale = 0.42  # inches per grid unit of height
    figure = plt.figure(figsize=(24 * 0.75, bottom * scale), facecolor="#181b1f")
    plt.rcParams.update({"text.color": "#d8d9da", "axes.labelcolor": "#d8d9da", "xtick.color": "#9fa7b3", "ytick.color": "#9fa7b3"})
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        left, width = grid["x"] / 24, grid["w"] / 24
        top, height = 1 - grid["y"] / bottom, grid["h"] / bottom
        if panel["type"] == "row":
            figure.text(left + 0.005, top - height / 2, panel["title"], fontsize=13, weight="bold", va="center")
            continue
        axes = figure.add_axes((left + 0.006, 1 - (grid["y"] + grid["h"]) / bottom + 0.012, width - 0.012, height - 0.03))
        axes.set_facecolor("#111217")
        for spine in axes.spines.values():
            spine.set_color("#2c3235")
        axes.set_title(panel["title"], fontsize=10, loc="left", color="#d8d9da")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if panel["type"] == "stat":
            series = query_range(base=args.prometheus, expr=panel["targets"][0]["expr"], start=end - step, end=end, step=step)
            value = float(series[0]["values"][-1][1]) if series else float("nan")
            text = "No data" if value != value else f"{value:,.0f}{' s' if unit == 's' else ''}"
            steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
            color = "#73bf69"
            for threshold in steps:
                if threshold["value"] is not None and value == value and value >= threshold["value"]:
                    color = {"red": "#f2495c", "orange": "#ff9830"}.get(threshold["color"], threshold["color"])
            if steps:
                axes.set_facecolor(color)
            axes.text(0.5, 0.42, text, fontsize=26, ha="center", va="center", transform=axes.transAxes,
                      color="#ffffff" if steps else color, weight="bold")
            axes.set_xticks([])
            axes.set_yticks([])
            continue
        drawn = 0
        for target in panel["targets"]:
            for series in query_range(args.prometheus, target["expr"], start, end, step):
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                axes.plot(xs, ys, linewidth=1.4, label=legend(target["legendFormat"], series["metric"]),
                          drawstyle="steps-post" if "Circuit" in panel["title"] else "default")
                drawn += 1
        if drawn:
            axes.legend(fontsize=7, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da", ncol=2)
        else:
            axes.text(0.5, 0.5, "No data", ha="center", va="center", transform=axes.transAxes, color="#9fa7b3")
        axes.set_xlim(-args.minutes, 0)
        axes.tick_params(labelsize=7)
        axes.grid(color="#2c3235", linewidth=0.5)
        axes.set_xlabel("minutes before the end of the run" + (f"   ({unit})" if unit else ""), fontsize=7)
    figure.savefig(args.out, dpi=80, facecolor=figure.get_facecolor())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

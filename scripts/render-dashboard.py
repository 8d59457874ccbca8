#!/usr/bin/env python3
"""Draws the Grafana dashboard's panels from a live Prometheus into one PNG, without Grafana.

    .venv/bin/python scripts/render-dashboard.py --prometheus http://127.0.0.1:9090 \\
        [--range 5m | --start T --end T] [--step 5s] [--scrape-interval 15s] \\
        [--dashboard deploy/grafana/kvstore.json] [--out docs/dashboard.png]

Every query of every panel is evaluated over the time range with /api/v1/query_range, with the
dashboard's variables set to "everything" (`$job`, `$instance`: `.*`) and `$__rate_interval`
computed as Grafana does (the larger of four scrape intervals and step plus one); each panel
becomes a small line chart with the panel's title, its series named by the panel's legend
format, in the dashboard's rows. A panel whose queries return nothing says "no data".

Times (--start, --end) are Unix seconds, `now`, or `now-10m`. Needs matplotlib and requests
(scripts/dashboard-demo.sh installs them in .venv).
"""

import argparse
import datetime as dt
import json
import math
import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard_queries  # noqa: E402

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    import requests
except ImportError as e:
    sys.exit(f"render-dashboard: {e}; run it with .venv/bin/python after .venv/bin/pip install matplotlib requests")

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text):
    """`90`, `90s`, `5m`, `1h` as seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return float(m.group(1)) * UNITS.get(m.group(2) or "s")


def instant(text, now):
    """Unix seconds, `now`, or `now-DURATION`."""
    if text == "now":
        return now
    if text.startswith("now-"):
        return now - seconds(text[4:])
    return float(text)


def duration_label(secs):
    secs = max(1, int(math.ceil(secs)))
    return f"{secs}s"


def human(value, unit):
    """A tick label in the panel's Grafana unit."""
    if value is None or math.isnan(value):
        return ""
    a = abs(value)
    if unit == "s":
        if a == 0:
            return "0"
        if a < 1e-3:
            return f"{value * 1e6:.0f}µs"
        if a < 1:
            return f"{value * 1e3:.3g}ms"
        return f"{value:.3g}s"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for p, name in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
            if a >= 2**p:
                return f"{value / 2**p:.3g}{name}{suffix}"
        return f"{value:.3g}B{suffix}"
    for p, name in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= p:
            return f"{value / p:.3g}{name}"
    return f"{value:.3g}"


def legend(fmt, labels):
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return labels.get("__name__", "") + "{" + inner + "}"


def query_range(session, url, expr, start, end, step):
    r = session.get(
        f"{url.rstrip('/')}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    )
    body = r.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def layout(dashboard, cols):
    """[("row", title) | ("panels", [panel, ...])]: each Grafana row's panels, `cols` a line."""
    lines, current = [], []

    def flush():
        while current:
            lines.append(("panels", current[:cols]))
            del current[:cols]

    for p in dashboard_queries.panels(dashboard):
        if p.get("type") == "row":
            flush()
            lines.append(("row", p.get("title", "")))
        elif p.get("targets"):
            current.append(p)
    flush()
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prometheus", required=True, help="Prometheus base URL")
    ap.add_argument("--dashboard", default="deploy/grafana/kvstore.json")
    ap.add_argument("--out", default="docs/dashboard.png")
    ap.add_argument("--range", type=seconds, default=None, help="the last DURATION (default 15m)")
    ap.add_argument("--start", help="Unix seconds, now or now-DURATION")
    ap.add_argument("--end", default="now")
    ap.add_argument("--step", type=seconds, default=None, help="resolution (default: range / 240, at least 1s)")
    ap.add_argument("--scrape-interval", type=seconds, default=15.0, help="Prometheus's, for $__rate_interval")
    ap.add_argument("--cols", type=int, default=6)
    args = ap.parse_args()

    now = dt.datetime.now(dt.timezone.utc).timestamp()
    end = instant(args.end, now)
    if args.start:
        start = instant(args.start, now)
    else:
        start = end - (args.range or 900)
    if start >= end:
        sys.exit("render-dashboard: --start must be before --end")
    step = args.step or max(1.0, (end - start) / 240)
    rate_interval = max(4 * args.scrape_interval, step + args.scrape_interval)
    values = {"__rate_interval": duration_label(rate_interval), "__interval": duration_label(step)}

    dashboard = json.load(open(args.dashboard))
    lines = layout(dashboard, args.cols)
    heights = [0.3 if kind == "row" else 1.0 for kind, _ in lines]
    inches = sum(heights) * 2.4 + 0.8
    fig = plt.figure(figsize=(3.6 * args.cols, inches), dpi=100)
    grid = fig.add_gridspec(len(lines), args.cols, height_ratios=heights, hspace=0.65, wspace=0.3,
                            left=0.03, right=0.99, top=1 - 0.75 / inches, bottom=0.2 / inches)
    t0, t1 = (dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in (start, end))
    fig.suptitle(f"{dashboard.get('title', 'dashboard')}: {args.dashboard} from Prometheus, "
                 f"{t0:%Y-%m-%d %H:%M:%S}-{t1:%H:%M:%S} UTC, step {step:g}s, rate interval {values['__rate_interval']}",
                 fontsize=12, x=0.01, y=1 - 0.2 / inches, ha="left", va="top")

    session = requests.Session()
    empty, failed, drawn = [], [], 0
    for i, (kind, item) in enumerate(lines):
        if kind == "row":
            ax = fig.add_subplot(grid[i, :])
            ax.axis("off")
            ax.text(0, 0.2, item, fontsize=12, fontweight="bold", transform=ax.transAxes)
            continue
        for j, panel in enumerate(item):
            ax = fig.add_subplot(grid[i, j])
            title = panel.get("title", "")
            ax.set_title(title, fontsize=9, loc="left")
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
            series = 0
            for target in panel["targets"]:
                expr = dashboard_queries.substitute(target["expr"], values)
                try:
                    result = query_range(session, args.prometheus, expr, start, end, step)
                except Exception as e:  # a broken query is drawn as such, and reported
                    failed.append(f"{title}: {e}")
                    ax.text(0.5, 0.5, "query failed", ha="center", va="center", color="red", transform=ax.transAxes)
                    continue
                for s in sorted(result, key=lambda s: legend(target.get("legendFormat"), s["metric"])):
                    xs = [dt.datetime.fromtimestamp(float(t), dt.timezone.utc) for t, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    ys = [y if math.isfinite(y) else float("nan") for y in ys]
                    ax.plot(xs, ys, linewidth=1.1, label=legend(target.get("legendFormat"), s["metric"]))
                    series += 1
            ax.set_xlim(t0, t1)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos, unit=unit: human(v, unit)))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.tick_params(labelsize=7)
            ax.grid(True, linewidth=0.3, alpha=0.6)
            if series == 0:
                empty.append(title)
                ax.text(0.5, 0.5, "no data", ha="center", va="center", color="grey", transform=ax.transAxes)
            else:
                drawn += 1
                handles, labels = ax.get_legend_handles_labels()
                if labels:
                    ax.legend(handles[:6], [l[:32] for l in labels[:6]], fontsize=6, loc="upper left",
                              framealpha=0.6, handlelength=1.2, borderaxespad=0.2)
                    if len(labels) > 6:
                        ax.text(0.99, 0.02, f"+{len(labels) - 6} more", ha="right", fontsize=6,
                                color="grey", transform=ax.transAxes)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out)
    total = drawn + len(empty)
    print(f"render-dashboard: {args.out}: {total} panels, {drawn} with data")
    if empty:
        print("render-dashboard: no data: " + "; ".join(empty))
    for f in failed:
        print(f"render-dashboard: query failed: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Turns kvbench JSON lines into the comparison table, prints it and writes it into
docs/benchmarks.md between the BENCH markers, with the machine it ran on.

Usage: bench_report.py RESULTS.jsonl SECS KEYS CONCURRENCY VALUE_SIZE [MEMORY.json]
"""

import datetime
import json
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.split("\n")[1].split()[1]
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, Linux {platform.release()}, load generator on the same machine"


def main(path, secs, keys, conc, vsize, memory_path=None):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = {r["label"]: r for r in rows}

    def p99(label):
        return by[label]["p99_ms"] if label in by else float("nan")

    def ratio(a, b):
        if a in by and b in by and by[b]["ops_per_sec"] > 0:
            return by[a]["ops_per_sec"] / by[b]["ops_per_sec"]
        return float("nan")

    lines = [
        f"Run {datetime.date.today()}: {machine()}. {vsize}-byte values, {conc} requests in flight, "
        f"{keys} keys, {secs} s per row, `make bench`.",
        "",
        "| run | ops/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "-"
        lines.append(f"| {r['label']} | {r['ops_per_sec']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {errors} |")
    w, c = "3 nodes+gw N=3 W", "3 nodes+gw N=3 C"
    lines += [
        "",
        "| ratio | measured | target |",
        "|---|---:|---:|",
        f"| N=3 W=2 writes / etcd puts | {ratio(w, 'etcd 3 members PUT'):.2f}x | 3x |",
        f"| N=3 W=2 writes / ceiling PUT | {ratio(w, 'ceiling PUT (noop)'):.2f}x | 0.2x |",
        f"| N=3 R=2 reads / etcd gets | {ratio(c, 'etcd 3 members GET'):.2f}x | 4x |",
        f"| N=3 R=2 reads / ceiling GET | {ratio(c, 'ceiling GET (noop)'):.2f}x | 0.25x |",
        f"| 1 node N=1 batch writes / ceiling PUT | {ratio('1 node N=1 W', 'ceiling PUT (noop)'):.2f}x | 0.6x |",
        f"| N=3 W=2 writes p99 | {p99(w):.2f} ms | < 5 ms |",
        f"| N=3 R=2 reads p99 | {p99(c):.2f} ms | < 5 ms |",
        f"| N=3 reads with TLS / without | {ratio(c + ', TLS', c):.2f}x | - |",
        f"| N=3 writes with TLS / without | {ratio(w + ', TLS', w):.2f}x | - |",
    ]
    if memory_path:
        m = json.load(open(memory_path))
        lines.append(
            f"| resident memory, 1 node, {m['keys']:,} keys of {vsize} B ({m['stored']:,} stored) "
            f"| {m['rss_kb'] / 1024:.0f} MB (peak {m['hwm_kb'] / 1024:.0f} MB) | < 300 MB |"
        )
    table = "\n".join(lines)
    print(table)
    text = open(DOC).read()
    block = f"<!-- BENCH:BEGIN -->\n{table}\n<!-- BENCH:END -->"
    if "<!-- BENCH:BEGIN -->" in text:
        text = re.sub(r"<!-- BENCH:BEGIN -->.*?<!-- BENCH:END -->", lambda _: block, text, flags=re.S)
    else:
        text += "\n## Side by side (`make bench`)\n\n" + block + "\n"
    open(DOC, "w").write(text)


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    main(sys.argv[1], *sys.argv[2:])

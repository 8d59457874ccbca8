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
        "| run | ops/s | p50 ms | p99 ms | loader cores | errors |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "-"
        # The load generator's own CPU over the row (cores busy on average): it shares the
        # two cores with the servers it measures.
        cores = r.get("loader_cores")
        cores = f"{cores:.2f}" if isinstance(cores, (int, float)) else "-"
        lines.append(
            f"| {r['label']} | {r['ops_per_sec']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {cores} | {errors} |"
        )
    w, c = "3 nodes+gw N=3 W", "3 nodes+gw N=3 C"
    wn, cn = "3 nodes N=3 W, to a node", "3 nodes N=3 C, to a node"

    def at_least(value, target, unit="x"):
        met = "met" if value >= target else "not met"
        return f"{value:.2f}{unit} | >= {target}{unit} | {met}"

    def below(value, target):
        met = "met" if value < target else "not met"
        return f"{value:.2f} ms | < {target} ms | {met}"

    # Targets of the performance issue (20).
    lines += [
        "",
        "| ratio | measured | target | |",
        "|---|---:|---:|---|",
        f"| N=3 W=2 writes / etcd puts | {at_least(ratio(w, 'etcd 3 members PUT'), 4)} |",
        f"| N=3 W=2 writes / ceiling PUT | {at_least(ratio(w, 'ceiling PUT (noop)'), 0.25)} |",
        f"| N=3 R=2 reads / etcd gets | {at_least(ratio(c, 'etcd 3 members GET'), 5)} |",
        f"| N=3 R=2 reads / ceiling GET | {at_least(ratio(c, 'ceiling GET (noop)'), 0.4)} |",
        f"| 1 node N=1 batch writes / ceiling PUT | {at_least(ratio('1 node N=1 W', 'ceiling PUT (noop)'), 0.5)} |",
        f"| N=3 W=2 writes p99 | {below(p99(w), 5)} |",
        f"| N=3 R=2 reads p99 | {below(p99(c), 3)} |",
        f"| N=3 W=2 writes to a node (no gateway) / etcd puts | {ratio(wn, 'etcd 3 members PUT'):.2f}x | - | |",
        f"| N=3 W=2 writes to a node / ceiling PUT | {ratio(wn, 'ceiling PUT (noop)'):.2f}x | - | |",
        f"| N=3 R=2 reads from a node / etcd gets | {ratio(cn, 'etcd 3 members GET'):.2f}x | - | |",
        f"| N=3 R=2 reads from a node / ceiling GET | {ratio(cn, 'ceiling GET (noop)'):.2f}x | - | |",
        f"| N=3 W=2 writes to a node p99 | {p99(wn):.2f} ms | - | |",
        f"| N=3 R=2 reads from a node p99 | {p99(cn):.2f} ms | - | |",
        f"| N=3 reads with TLS / without | {ratio(c + ', TLS', c):.2f}x | - | |",
        f"| N=3 writes with TLS / without | {ratio(w + ', TLS', w):.2f}x | - | |",
    ]
    if memory_path:
        m = json.load(open(memory_path))
        lines.append(
            f"| resident memory, 1 node, {m['keys']:,} keys of {vsize} B ({m['stored']:,} stored) "
            f"| {m['rss_kb'] / 1024:.0f} MB (peak {m['hwm_kb'] / 1024:.0f} MB) | < 300 MB | |"
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

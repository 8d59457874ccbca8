#!/usr/bin/env python3
"""The PromQL of the Grafana dashboard and the alert rules, for checks and for rendering.

    dashboard_queries.py rules DASHBOARD.json          recording rules (YAML) holding every panel
                                                       query, Grafana variables replaced, for
                                                       `promtool check rules`; first checks that
                                                       panels have unique ids, titles, places and
                                                       query the `${datasource}` variable
    dashboard_queries.py names --source DIR FILE...    every metric named in the dashboards
                                                       (.json) and rule files (.yml): fails
                                                       naming those no source under DIR exports

Grafana variables are replaced by stand-ins that keep a query valid PromQL: `$__rate_interval`
and the other interval variables by a duration, every other `$name`, `${name}`, `${name:fmt}`
and `[[name]]` by `.*` (dashboard variables are only used inside regex label matchers).

A metric counts as exported when its name, less a `_bucket`, `_sum` or `_count` suffix, is a
string literal in some Rust source under DIR (`"kv_..."`), or when it is a metric of the
prometheus crate's process collector and some source registers a `ProcessCollector`, or it is
Prometheus's own `up`.
"""

import json
import os
import re
import sys

# Interval variables Grafana fills in: a duration keeps `rate(x[$__rate_interval])` valid.
INTERVALS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "__interval_ms": "60000",
}

# Metrics of the prometheus crate's process collector (`process` feature, Linux).
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
}

# Words of PromQL that look like identifiers but name no metric.
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}

VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def substitute(expr, values=None):
    """`expr` with Grafana variables replaced: `values` first, then interval stand-ins, then `.*`."""
    values = values or {}

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in values:
            return values[name]
        return INTERVALS.get(name, ".*")

    return VARIABLE.sub(repl, expr)


def panels(dashboard):
    """Every panel of a dashboard, those inside collapsed rows included, in order."""
    for p in dashboard.get("panels", []):
        yield p
        for inner in p.get("panels", []) or []:
            yield inner


def queries(dashboard):
    """(panel, target) for every Prometheus query of the dashboard's panels."""
    for p in panels(dashboard):
        for t in p.get("targets", []) or []:
            if t.get("expr") and not t.get("hide"):
                yield p, t


def variable_queries(dashboard):
    """The query of every `query` template variable (e.g. `label_values(metric, job)`)."""
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if q:
            yield v["name"], q


def metric_names(expr):
    """Metric names a PromQL expression selects (a lexical scan, enough for our queries)."""
    s = substitute(expr)
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', s)  # strings
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s):
        word = m.group(0)
        if word.lower() in KEYWORDS or s[m.end() :].lstrip().startswith("("):
            continue  # a keyword, or a function or aggregation called
        names.add(word)
    return names


def label_values_metric(query):
    """The metric of `label_values(metric{...}, label)`, if it names one."""
    m = re.match(r"\s*label_values\s*\(\s*([A-Za-z_:][\w:]*)\s*[{,]", query)
    return m.group(1) if m else None


def lint(dashboard):
    """What Grafana would import but show wrongly: duplicate or missing panel ids, panels
    without a title or a place, queries not on the `${datasource}` variable, a query without a
    refId or with a duplicate one."""
    problems, ids = [], set()
    if not any(v.get("name") == "datasource" for v in dashboard.get("templating", {}).get("list", [])):
        problems.append("no `datasource` template variable")
    for p in panels(dashboard):
        pid, title = p.get("id"), p.get("title")
        where = f"panel {pid} {title!r}"
        if pid is None or pid in ids:
            problems.append(f"{where}: missing or duplicate id")
        ids.add(pid)
        if not title:
            problems.append(f"{where}: no title")
        if not {"h", "w", "x", "y"} <= set(p.get("gridPos", {})):
            problems.append(f"{where}: no gridPos")
        if p.get("type") == "row":
            continue
        refs = [t.get("refId") for t in p.get("targets", [])]
        if not refs or None in refs or len(set(refs)) != len(refs):
            problems.append(f"{where}: no queries, or a missing or duplicate refId")
        for t in [p] + p.get("targets", []):
            uid = (t.get("datasource") or {}).get("uid")
            if uid != "${datasource}":
                problems.append(f"{where}: datasource {uid!r}, not ${{datasource}}")
    return problems


def rules_yaml(dashboard):
    """One recording rule per panel query; JSON strings are valid YAML scalars."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for n, (p, t) in enumerate(queries(dashboard)):
        lines.append(f"      - record: dashboard:panel_{p.get('id', 0)}_{t.get('refId', n)}")
        lines.append(f"        expr: {json.dumps(substitute(t['expr']))}")
    return "\n".join(lines) + "\n"


def source_literals(root):
    """Every `"kv_..."` string literal and every route template (`"/..."`) in the Rust sources
    under `root`, and whether some source registers the process collector."""
    names, routes, process = set(), set(), False
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git")]
        for f in filenames:
            if not f.endswith(".rs"):
                continue
            text = open(os.path.join(dirpath, f), encoding="utf-8", errors="replace").read()
            names.update(re.findall(r'"(kv_\w+)"', text))
            routes.update(re.findall(r'"(/[^"\s]*)"', text))
            process = process or "ProcessCollector" in text
    return names, routes, process


def exported(name, literals, process):
    if name == "up":
        return True
    if name in PROCESS_METRICS:
        return process
    if name in literals:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in literals:
            return True
    return False


def file_expressions(path):
    """(where, expr) of every query in a dashboard (.json) or rule file (.yml, .yaml)."""
    if path.endswith(".json"):
        dashboard = json.load(open(path))
        for p, t in queries(dashboard):
            yield f"panel {p.get('id')} \"{p.get('title')}\" {t.get('refId')}", t["expr"]
        for name, q in variable_queries(dashboard):
            metric = label_values_metric(q)
            if metric:
                yield f"variable {name}", metric
        return
    import yaml  # only rule files need it

    doc = yaml.safe_load(open(path))
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            yield f"rule {rule.get('alert') or rule.get('record')}", str(rule["expr"])


def check_names(source, files):
    literals, routes, process = source_literals(source)
    missing, used = [], set()
    for path in files:
        for where, expr in file_expressions(path):
            for name in sorted(metric_names(expr)):
                used.add(name)
                if not exported(name, literals, process):
                    missing.append(f"{path}: {where}: {name}")
            # A route label is the router's template (MatchedPath): it must be one.
            for route in re.findall(r'\broute\s*=\s*"([^"]+)"', expr):
                if route not in routes:
                    missing.append(f"{path}: {where}: route {route!r} (no such route template)")
    if missing:
        print(f"metrics or routes not in any source under {source}/ (renamed or not added yet):", file=sys.stderr)
        for m in missing:
            print(f"  {m}", file=sys.stderr)
        return 1
    print(f"metric names: {len(used)} used in {len(files)} files, all exported")
    return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "rules":
        dashboard = json.load(open(argv[1]))
        problems = lint(dashboard)
        for problem in problems:
            print(f"{argv[1]}: {problem}", file=sys.stderr)
        if problems:
            return 1
        sys.stdout.write(rules_yaml(dashboard))
        return 0
    if len(argv) >= 4 and argv[0] == "names" and argv[1] == "--source":
        return check_names(argv[2], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

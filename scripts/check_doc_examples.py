#!/usr/bin/env python3
"""Runs the curl examples of Markdown docs against a real, freshly started local cluster.

Every ```sh block that calls curl is run in order with bash (set -euo pipefail). When the
block is followed directly by a ```text block, the command's output must equal it (trailing
whitespace ignored). The cluster is the one `make run` starts (scripts/cluster.sh: nodes' client
APIs on 127.0.0.1:7001-7003, their peer listeners on 7101-7103 and admin on 7201-7203; the
gateway on 8080, admin 8081: the addresses the docs use) with a throw-away
data directory; if one of those ports is taken (say `make run` is up), free ports are used and
the addresses are rewritten in the commands, which is reported.

Usage: scripts/check_doc_examples.py FILE.md [FILE.md ...]
"""

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "scripts", "cluster.sh")
DOC_NODE_BASE = 7001
# Client, peer and admin ports of 3 nodes, relative to the base (as cluster.sh numbers them).
NODE_OFFSETS = [0, 1, 2, 100, 101, 102, 200, 201, 202]
DOC_GATEWAY_PORT = 8080
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def blocks(path):
    text = open(path, encoding="utf-8").read()
    found = [(m.group(1), m.group(2), m.start(), m.end()) for m in BLOCK.finditer(text)]
    examples = []
    for i, (lang, body, _, end) in enumerate(found):
        if lang not in ("sh", "bash") or ("curl" not in body and "kvctl" not in body):
            continue
        expected = None
        if i + 1 < len(found):
            nlang, nbody, nstart, _ = found[i + 1]
            if nlang == "text" and text[end:nstart].strip() == "":
                expected = nbody
        examples.append((body, expected))
    return examples


def port_free(port):
    with socket.socket() as s:
        # Like the node's own listener: a port held only by TIME_WAIT sockets is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# Ports for the children: below the kernel's ephemeral range (32768 and up), which the
# children's own outgoing connections draw from, so that a port picked here is not taken by one
# of them before the listener it is meant for binds it (a node failed to start with "Address
# already in use" on a port picked by binding port 0); never the same port twice in this process.
_TEST_PORTS = range(10_000, 32_000)
_handed_out = set()


def free_port():
    start = secrets.randbelow(len(_TEST_PORTS))
    for i in range(len(_TEST_PORTS)):
        port = _TEST_PORTS[(start + i * 7919) % len(_TEST_PORTS)]
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free test port")


def normalise(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def main(paths):
    def ports(base, gateway):
        return [base + o for o in NODE_OFFSETS] + [gateway, gateway + 1]

    base, gateway_port = DOC_NODE_BASE, DOC_GATEWAY_PORT
    rewrite = {}
    if not all(port_free(p) for p in ports(base, gateway_port)):
        # cluster.sh numbers node ports from a base; the gateway's admin port is one above it.
        while True:
            base, gateway_port = free_port(), free_port()
            if base < 60000 and all(port_free(p) for p in ports(base, gateway_port)):
                break
        pairs = zip(ports(DOC_NODE_BASE, DOC_GATEWAY_PORT), ports(base, gateway_port))
        rewrite = {f"127.0.0.1:{a}": f"127.0.0.1:{b}" for a, b in pairs}
        print(f"check_doc_examples: the documented ports are taken; using {rewrite}")
    data = tempfile.mkdtemp(prefix="kv-doc-examples-")
    env = dict(os.environ, KV_DATA=data, KV_BASE_PORT=str(base), KV_GATEWAY_PORT=str(gateway_port))
    # As after `make run` and `export KV_CLUSTER_SECRET_FILE=data/cluster.secret`: kvctl signs
    # admin commands with the cluster's secret.
    # kvctl on the PATH, from the binaries the cluster runs.
    bin_dir = os.path.abspath(os.environ.get("KV_BIN", os.path.join(ROOT, "target", "release")))
    example_env = dict(
        os.environ,
        KV_CLUSTER_SECRET_FILE=os.path.join(data, "cluster.secret"),
        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
    )
    failures = 0
    total = 0
    try:
        subprocess.run([CLUSTER, "start", "--nodes", "3"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=120)
        for path in paths:
            for body, expected in blocks(path):
                total += 1
                script = body.replace("data/cluster.secret", os.path.join(data, "cluster.secret"))
                for old, new in rewrite.items():
                    script = script.replace(old, new)
                run = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", script],
                    capture_output=True, text=True, timeout=60, env=example_env,
                )
                ok = run.returncode == 0
                if ok and expected is not None:
                    ok = normalise(run.stdout) == normalise(expected)
                if not ok:
                    failures += 1
                    print(f"FAIL {path}:\n{body}\n--- exit {run.returncode}; stdout:\n{run.stdout}"
                          f"\n--- stderr:\n{run.stderr}\n--- expected:\n{expected}\n")
    finally:
        subprocess.run([CLUSTER, "stop"], env=env, stdout=subprocess.DEVNULL, timeout=120)
        shutil.rmtree(data, ignore_errors=True)
    print(f"examples: {total - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))

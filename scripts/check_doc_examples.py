#!/usr/bin/env python3
"""Runs the curl examples of Markdown docs against a real, freshly started kvnode.

Every ```sh block that calls curl is run in order with bash (set -euo pipefail). When the
block is followed directly by a ```text block, the command's output must equal it (trailing
whitespace ignored). The node listens on 127.0.0.1:7000, the address the docs use, with a
throw-away data directory; if that port is taken (say `make run` is up), a free port is used
and the address is rewritten in the commands, which is reported.

Usage: scripts/check_doc_examples.py FILE.md [FILE.md ...]
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KVNODE = os.path.join(ROOT, "target", "release", "kvnode")
DOC_ADDR = "127.0.0.1:7000"
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def blocks(path):
    text = open(path, encoding="utf-8").read()
    found = [(m.group(1), m.group(2), m.start(), m.end()) for m in BLOCK.finditer(text)]
    examples = []
    for i, (lang, body, _, end) in enumerate(found):
        if lang not in ("sh", "bash") or "curl" not in body:
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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(addr, proc):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"check_doc_examples: kvnode exited with {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"http://{addr}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    sys.exit("check_doc_examples: kvnode did not become ready")


def normalise(text):
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def main(paths):
    if not os.access(KVNODE, os.X_OK):
        sys.exit(f"check_doc_examples: {KVNODE} missing; run `cargo build --release` first")
    addr = DOC_ADDR
    if not port_free(7000):
        addr = f"127.0.0.1:{free_port()}"
        print(f"check_doc_examples: {DOC_ADDR} is taken; running the examples against {addr}")
    data = tempfile.mkdtemp(prefix="kv-doc-examples-")
    proc = subprocess.Popen(
        [KVNODE, "--node-id", "docs", "--listen", addr, "--data-dir", os.path.join(data, "node")],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(data, "kvnode.log"), "w"),
    )
    failures = 0
    total = 0
    try:
        wait_ready(addr, proc)
        for path in paths:
            for body, expected in blocks(path):
                total += 1
                script = body.replace(DOC_ADDR, addr)
                run = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", script],
                    capture_output=True, text=True, timeout=60,
                )
                ok = run.returncode == 0
                if ok and expected is not None:
                    ok = normalise(run.stdout) == normalise(expected)
                if not ok:
                    failures += 1
                    print(f"FAIL {path}:\n{body}\n--- exit {run.returncode}; stdout:\n{run.stdout}"
                          f"\n--- stderr:\n{run.stderr}\n--- expected:\n{expected}\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)
    print(f"examples: {total - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))

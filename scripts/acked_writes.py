#!/usr/bin/env python3
"""Acknowledged writes, kept: the client side of the scaling tests (test-docker.sh,
test-scale-local.sh).

  acked_writes.py write  --url URL --acked FILE [--stop-file F] [--rate N] [--threads T]
  acked_writes.py verify --url URL --acked FILE

`write` puts fresh keys (`<prefix>-<thread>-<i>`, value `v:<key>`) through the client API until
SIGTERM, the stop file appears or --max-seconds pass, and appends every key answered 2xx to
the acked file the moment the answer arrives: what the store promised to keep. Every key is
written once, blind, so a read of it has exactly one value. Counts go to stdout at the end.

`verify` reads every acknowledged key back (the cluster's default R) and checks its value.
It prints `written`, `acknowledged`, `read back` and `missing`, and exits 1 unless every
acknowledged key reads back with its value. A read answered 5xx is retried for a while (a
transient refusal is not a lost key); one still failing is reported as `unavailable` (after
--max-unavailable of them it gives up: the cluster is gone).
"""

import argparse
import base64
import http.client
import json
import signal
import sys
import threading
import time
import urllib.parse


def connect(url: str, timeout: float) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


class Client:
    """One keep-alive connection, reopened after any error."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout, self.conn = url, timeout, None

    def request(self, method: str, key: str, body: bytes | None = None):
        path = "/kv/" + urllib.parse.quote(key, safe="")
        headers = {"Content-Type": "text/plain"} if body is not None else {}
        try:
            if self.conn is None:
                self.conn = connect(self.url, self.timeout)
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as e:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None, str(e).encode()


def value_of(key: str) -> bytes:
    return ("v:" + key).encode()


def write(args) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    lock = threading.Lock()
    counts = {"written": 0, "acknowledged": 0, "failed": {}}
    acked = open(args.acked, "a", buffering=1)
    deadline = time.monotonic() + args.max_seconds
    interval = args.threads / args.rate if args.rate > 0 else 0.0

    def run(t: int):
        client = Client(args.url)
        i = 0
        next_at = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline and i < args.max_keys:
            key = f"{args.prefix}-{t}-{i}"
            i += 1
            status, body = client.request("PUT", key, value_of(key))
            with lock:
                counts["written"] += 1
                if status is not None and 200 <= status < 300:
                    counts["acknowledged"] += 1
                    acked.write(key + "\n")
                else:
                    # The status and the error code (`503 outcome_unknown`), so a run says why.
                    label = str(status) if status is not None else "no answer"
                    try:
                        label += " " + json.loads(body)["error"]
                    except (ValueError, KeyError, TypeError):
                        pass
                    counts["failed"][label] = counts["failed"].get(label, 0) + 1
            if interval:
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    stop.wait(pause)
                else:
                    next_at = time.monotonic()

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(args.threads)]
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        if args.stop_file and not stop.is_set():
            try:
                open(args.stop_file).close()
                stop.set()
            except OSError:
                pass
        time.sleep(0.2)
    acked.close()
    print(json.dumps(counts))
    return 0


def verify(args) -> int:
    keys = [line.strip() for line in open(args.acked) if line.strip()]
    written = None
    if args.counts:
        try:
            written = json.load(open(args.counts)).get("written")
        except (OSError, ValueError):
            pass
    client = Client(args.url)
    found, missing, wrong, unavailable = 0, [], [], []
    for key in keys:
        expected = value_of(key)
        for attempt in range(args.retries + 1):
            status, body = client.request("GET", key)
            if status is None or status >= 500:
                time.sleep(min(0.1 * 2**attempt, 2.0))
                continue
            break
        if status == 200 and body == expected:
            found += 1
        elif status == 300 and any(
            base64.b64decode(s["value"]) == expected for s in json.loads(body).get("siblings", [])
        ):
            found += 1
        elif status == 404:
            missing.append(key)
        elif status is None or status >= 500:
            unavailable.append(f"{key}: {status} {body[:200]!r}")
            if len(unavailable) >= args.max_unavailable:
                print(f"giving up after {len(unavailable)} keys without an answer: is the cluster up?")
                break
        else:
            wrong.append(f"{key}: {status} {body[:200]!r}")
    print(
        f"written {written if written is not None else '?'}, acknowledged {len(keys)}, "
        f"read back {found}, missing {len(missing)}, wrong value {len(wrong)}, unavailable {len(unavailable)}"
    )
    for line in (missing + wrong + unavailable)[:20]:
        print("  " + line)
    return 0 if found == len(keys) and keys else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write fresh keys, record every acknowledged one")
    w.add_argument("--url", required=True, help="client API base URL, e.g. http://127.0.0.1:8080")
    w.add_argument("--acked", required=True, help="file the acknowledged keys are appended to")
    w.add_argument("--prefix", default="acked", help="key prefix")
    w.add_argument("--threads", type=int, default=2, help="writers in parallel")
    w.add_argument("--rate", type=float, default=200.0, help="writes per second in all, at most (0: no limit)")
    w.add_argument("--stop-file", help="stop once this file exists")
    w.add_argument("--max-seconds", type=float, default=900.0, help="stop after this long in any case")
    w.add_argument("--max-keys", type=int, default=1_000_000, help="keys per thread, at most")
    v = sub.add_parser("verify", help="read every acknowledged key back")
    v.add_argument("--url", required=True)
    v.add_argument("--acked", required=True)
    v.add_argument("--counts", help="the writer's JSON counts (for the `written` figure)")
    v.add_argument("--retries", type=int, default=8, help="retries of a read answered 5xx or not at all")
    v.add_argument("--max-unavailable", type=int, default=20, help="give up after this many keys without an answer")
    args = parser.parse_args()
    return write(args) if args.command == "write" else verify(args)


if __name__ == "__main__":
    sys.exit(main())

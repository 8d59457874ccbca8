#!/usr/bin/env python3
"""Back up a cluster by reading it, and restore the backup into a cluster by writing it.

    scripts/backup.py backup  --admin-urls http://N1:7200,http://N2:7200,... --url http://GW:8080 \
                              --cluster-secret-file FILE [--token T] --out backup.jsonl
    scripts/backup.py restore --url http://GW:8080 [--token T] --in backup.jsonl

Why not copy a node's files: a node started on an older copy of its own data directory would
serve without writes it acknowledged and reissue dot counters it already used, so the store
refuses it (docs/operations.md, "Backups are not restores"). A backup is what clients can read.

backup: lists the keys every node stores (`GET /admin/keys`, signed by kvctl with the cluster
secret; deleted keys too, which are skipped), reads each key through the client API at the
default R, and writes one JSON line per live key: {"key": ..., "values": [{"value": base64,
"content_type": ...}, ...]}, every sibling kept. Keys are listed as UTF-8 text (a key that is
not valid UTF-8 is reported and skipped). It is not a point-in-time snapshot: writes during the
backup may or may not be in it.

restore: writes every value of every line with a blind PUT (no context) at the default W;
two blind writes of one key are concurrent, so a key backed up with siblings is restored with
the same siblings. Restoring into a cluster that already holds a key adds the backup's values
as siblings of what is there (nothing is overwritten silently). Exit status 0 only if every
key was read (backup) or every write acknowledged (restore).
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request


def kvctl():
    """The kvctl binary: KV_BIN, else ./target/release, else PATH."""
    for candidate in (os.environ.get("KV_BIN", ""), "target/release", "target/debug"):
        path = os.path.join(candidate, "kvctl") if candidate else ""
        if path and os.access(path, os.X_OK):
            return path
    return "kvctl"


def request(method, url, token=None, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def key_url(base, key):
    return f"{base.rstrip('/')}/kv/{urllib.parse.quote(key, safe='')}"


def node_keys(admin_url, secret_file):
    out = subprocess.run(
        [kvctl(), "--admin-url", admin_url, "--cluster-secret-file", secret_file, "admin", "get", "/admin/keys"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"backup: listing the keys of {admin_url} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)["keys"]


def backup(args):
    keys = set()
    for admin_url in args.admin_urls.split(","):
        listed = node_keys(admin_url, args.cluster_secret_file)
        print(f"backup: {admin_url} stores {len(listed)} keys", file=sys.stderr)
        keys.update(listed)
    written = deleted = failed = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for key in sorted(keys):
            if "\ufffd" in key:
                print(f"backup: skipping a key that is not UTF-8: {key!r}", file=sys.stderr)
                failed += 1
                continue
            status, headers, body = request("GET", key_url(args.url, key), args.token)
            if status == 404:
                deleted += 1
                continue
            if status == 200:
                values = [{"value": base64.b64encode(body).decode(), "content_type": headers.get("Content-Type", "")}]
            elif status == 300:
                values = [
                    {"value": s["value"], "content_type": s.get("content_type", "")} for s in json.loads(body)["siblings"]
                ]
            else:
                print(f"backup: reading {key!r} answered {status}: {body[:200]!r}", file=sys.stderr)
                failed += 1
                continue
            out.write(json.dumps({"key": key, "values": values}) + "\n")
            written += 1
    print(f"backup: {written} keys written to {args.out}, {deleted} deleted keys skipped, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def restore(args):
    keys = writes = failed = 0
    with open(args.input, encoding="utf-8") as backup_file:
        for line in backup_file:
            record = json.loads(line)
            keys += 1
            for value in record["values"]:
                body = base64.b64decode(value["value"])
                status, _, answer = request(
                    "PUT", key_url(args.url, record["key"]), args.token, body, value.get("content_type") or None
                )
                if 200 <= status < 300:
                    writes += 1
                else:
                    print(f"restore: writing {record['key']!r} answered {status}: {answer[:200]!r}", file=sys.stderr)
                    failed += 1
    print(f"restore: {keys} keys, {writes} values written, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup")
    b.add_argument("--admin-urls", required=True, help="comma-separated admin URLs of every node")
    b.add_argument("--url", required=True, help="client API URL of a gateway or node")
    b.add_argument("--cluster-secret-file", required=True)
    b.add_argument("--token", default=os.environ.get("KV_TOKEN"))
    b.add_argument("--out", required=True)
    r = sub.add_parser("restore")
    r.add_argument("--url", required=True)
    r.add_argument("--token", default=os.environ.get("KV_TOKEN"))
    r.add_argument("--in", dest="input", required=True)
    args = parser.parse_args()
    sys.exit(backup(args) if args.command == "backup" else restore(args))


if __name__ == "__main__":
    main()

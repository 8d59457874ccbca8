"""Real kvnode and kvgateway processes for the client's tests: free ports, a temporary directory,
every child killed at the end (also when a test fails). Binaries from $KV_BIN (default
../../target/debug, what `cargo build --workspace --bins` makes)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence

import httpx

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("KV_BIN", ROOT / "target" / "debug")).resolve()
# Fast gossip; but a member suspects (and a process thinks itself frozen) only after the default
# 5 s: on a machine starved of CPU, stalls of 2 s made both survivors of a killed node think they
# had been frozen, and with no unfrozen member left to confirm them they refused clients
# (docs/consistency.md, "What this does not promise").
FAST = ["--gossip-interval", "200ms", "--suspect-after", "5s", "--replica-timeout", "2s"]


# Ports for the children: below the kernel's ephemeral range (32768 and up), which the
# children's own outgoing connections draw from, so that a port picked here is not taken by one
# of them before the listener it is meant for binds it (a node failed to start with "Address
# already in use" on a port picked by binding port 0); never the same port twice in this process.
_TEST_PORTS = range(10_000, 32_000)
_handed_out = set()


def free_port() -> int:
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


class TestCa:
    """A CA and one certificate it signs for 127.0.0.1 and localhost, server and client use,
    made with the openssl command."""

    def __init__(self, directory: Path):
        self.ca = directory / "ca.pem"
        self.cert, self.key = directory / "cert.pem", directory / "cert.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", *ec, "-keyout", str(directory / "ca.key"), "-out", str(self.ca), "-days", "2",
            "-subj", "/CN=kvstore test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", *ec, "-keyout", str(self.key), "-out", str(directory / "cert.csr"), "-subj", "/CN=member")
        ext = directory / "cert.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
                       "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n")
        run("x509", "-req", "-in", str(directory / "cert.csr"), "-CA", str(self.ca), "-CAkey",
            str(directory / "ca.key"), "-CAcreateserial", "-out", str(self.cert), "-days", "2", "-extfile", str(ext))

    def args(self) -> List[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]


class Proc:
    def __init__(self, name: str, args: List[str], env: dict, log: Path, client: int, admin: int, scheme: str):
        self.name, self.args, self.env, self.log = name, args, env, log
        self.client_port, self.admin_port, self.scheme = client, admin, scheme
        self.child: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def admin_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # The processes log to stdout: kept, so that a failure can show what they said.
            self.child = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGKILL)
            self.child.wait()

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:]) if self.log.exists() else ""


class Cluster:
    """`nodes` kvnodes and a kvgateway, all with `args` (TLS when `tls`); the first `started`
    nodes (all by default) are started at once and the cluster is awaited only when all are."""

    def __init__(self, directory: Path, nodes: int = 3, args: Sequence[str] = (), tls: Optional[TestCa] = None,
                 gateway: bool = True, started: Optional[int] = None):
        self.directory, self.tls = directory, tls
        self.scheme = "https" if tls else "http"
        self.secret = secrets.token_hex(32)
        env = dict(os.environ, KV_CLUSTER_SECRET=self.secret, RUST_LOG=os.environ.get("KV_TEST_LOG", "warn"))
        extra = list(args) + (tls.args() if tls else [])
        ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        seeds = ",".join(f"127.0.0.1:{peer}" for _, peer, _ in ports)
        self.nodes: List[Proc] = []
        for i, (client, peer, admin) in enumerate(ports, start=1):
            argv = [str(BIN / "kvnode"), "--node-id", f"n{i}", "--listen", f"127.0.0.1:{client}",
                    "--peer-listen", f"127.0.0.1:{peer}", "--admin-listen", f"127.0.0.1:{admin}",
                    "--data-dir", str(directory / f"n{i}"), "--seeds", seeds, "--expect-nodes", str(nodes),
                    *FAST, *extra]
            self.nodes.append(Proc(f"n{i}", argv, env, directory / f"n{i}.log", client, admin, self.scheme))
        self.gateway: Optional[Proc] = None
        if gateway:
            client, admin = free_port(), free_port()
            argv = [str(BIN / "kvgateway"), "--listen", f"127.0.0.1:{client}", "--admin-listen",
                    f"127.0.0.1:{admin}", "--seeds", seeds, "--expect-nodes", str(nodes), *FAST, *extra]
            self.gateway = Proc("gateway", argv, env, directory / "gateway.log", client, admin, self.scheme)
        self.http = httpx.Client(timeout=2.0, verify=ssl.create_default_context(cafile=str(tls.ca)) if tls else True)
        try:
            for node in self.nodes[: nodes if started is None else started]:
                node.start()
            if started is None or started == nodes:
                self.start_rest()
            else:
                self._await(self.nodes[:started], "/health/live")
        except BaseException:
            self.stop()
            raise

    def start_rest(self) -> None:
        """Starts the nodes not started yet and the gateway; waits until every process is ready."""
        for proc in self.procs():
            if proc.child is None:
                proc.start()
        self._await(self.procs(), "/health/ready")
        # Ready is each process's own view: wait until every one lists every node normal, as the
        # Rust harness does. Otherwise a node killed at once may be the only one that saw the
        # cluster form: the others, still holding it as joining, stay forming (503) for good.
        deadline = time.monotonic() + 60
        for proc in self.procs():
            while self._normal(proc) < len(self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} does not list {len(self.nodes)} normal members in 60 s:\n"
                                       f"{self.diagnose(proc)}")
                time.sleep(0.05)

    def _await(self, procs: List[Proc], path: str) -> None:
        deadline = time.monotonic() + 60
        for proc in procs:
            while not self._answers(proc, path):
                if proc.child.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited {proc.child.returncode}:\n{proc.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} not ready in 60 s:\n{proc.log_tail()}")
                time.sleep(0.1)

    def diagnose(self, proc: Proc) -> str:
        """What `proc` answers now, for a failure's message: a PUT of its own, its readiness and
        its view of the members."""
        out = []
        for method, url in (("PUT", proc.url + "/kv/diagnose"), ("GET", proc.admin_url + "/health/ready"),
                            ("GET", proc.admin_url + "/cluster/members")):
            try:
                r = self.http.request(method, url, content=b"x" if method == "PUT" else None)
                out.append(f"{method} {url}: {r.status_code} {r.text[:600]}")
            except httpx.HTTPError as e:
                out.append(f"{method} {url}: {type(e).__name__}: {e}")
        return "\n".join(out)

    def _normal(self, proc: Proc) -> int:
        """How many members `proc` lists as normal."""
        try:
            members = self.http.get(proc.admin_url + "/cluster/members").json()["members"]
        except (httpx.HTTPError, ValueError, KeyError):
            return 0
        return sum(1 for m in members if m.get("status") == "normal")

    def _answers(self, proc: Proc, path: str) -> bool:
        try:
            return self.http.get(proc.admin_url + path).status_code == 200
        except httpx.HTTPError:
            return False

    def procs(self) -> List[Proc]:
        return self.nodes + ([self.gateway] if self.gateway else [])

    @property
    def node_urls(self) -> List[str]:
        return [n.url for n in self.nodes]

    def stop(self) -> None:
        for proc in self.procs():
            proc.kill()
        self.http.close()

"""The Python client against real kvnode and kvgateway processes: values, siblings, resolvers,
a node down, retries that honour Retry-After, tokens and TLS, blocking and asyncio."""

import asyncio
import os
import threading
import time
import uuid

import pytest

import kvstore
from cluster import Cluster
from conftest import TOKENS


def fresh(name):
    return f"{name}/{uuid.uuid4().hex[:8]}"


def test_put_get_delete_through_the_gateway(cluster):
    with kvstore.Client(cluster.gateway.url) as kv:
        key = fresh("user")
        assert kv.get(key) is None
        context = kv.put(key, b'{"name": "Ada"}', content_type="application/json")
        assert context
        value = kv.get(key)
        assert value.values == [b'{"name": "Ada"}']
        assert value.content_types == ["application/json"]
        assert value.value == b'{"name": "Ada"}' and not value.has_siblings
        assert value.context
        kv.put(key, "text", context=value.context)
        assert kv.get(key).values == [b"text"] and kv.get(key).content_types == ["text/plain; charset=utf-8"]
        kv.delete(key, context=kv.get(key).context)
        assert kv.get(key) is None
        # Keys with characters a URL reserves; quorums per call.
        odd = fresh("a/b?c#d %e")
        kv.put(odd, b"x", w="all")
        assert kv.get(odd, r=3).values == [b"x"]


def test_siblings_are_listed_and_resolved(cluster):
    with kvstore.Client(cluster.gateway.url) as kv:
        key = fresh("colour")
        kv.put(key, b"red")
        assert kv.put(key, b"blue") is None, "a blind write beside another version leaves siblings"
        value = kv.get(key)
        assert value.has_siblings and sorted(value.values) == [b"blue", b"red"]
        assert len(value.content_types) == 2 and all(s.written_at for s in value.siblings)
        with pytest.raises(kvstore.Conflict):
            value.value
        merged = kv.resolve(key, lambda v: b"+".join(sorted(v.values)))
        assert merged.values == [b"blue+red"]
        assert kv.get(key).values == [b"blue+red"]
        # A key without siblings is returned as it is.
        assert kv.resolve(key, lambda v: pytest.fail("no siblings to merge")).values == [b"blue+red"]


def test_newest_wins_keeps_the_last_write(cluster):
    # Both writes coordinated by the same node: its clock orders their written_at.
    with kvstore.Client(cluster.nodes[0].url) as kv:
        key = fresh("profile")
        kv.put(key, b"first")
        time.sleep(0.05)
        kv.put(key, b"second")
        value = kv.get(key)
        assert sorted(value.values) == [b"first", b"second"]
        assert kvstore.newest_wins(value) == (b"second", "application/octet-stream")
        assert kv.resolve(key, kvstore.newest_wins).values == [b"second"]
        # The newest sibling is a delete: the resolver deletes.
        deleted = fresh("gone")
        first = kv.put(deleted, b"old")
        kv.put(deleted, b"concurrent")
        time.sleep(0.05)
        kv.delete(deleted, context=first)  # deletes "old" only: "concurrent" stays beside it
        value = kv.get(deleted)
        assert value.values == [b"concurrent"] and value.has_siblings
        assert [s.deleted for s in value.siblings].count(True) == 1
        assert kvstore.newest_wins(value) is None
        assert kv.resolve(deleted, kvstore.newest_wins) is None
        assert kv.get(deleted) is None


def test_errors_are_typed(cluster):
    with kvstore.Client(cluster.gateway.url, retries=0) as kv:
        with pytest.raises(kvstore.BadRequest) as bad:
            kv.put("k", b"v", context="not-a-context")
        assert bad.value.status == 400 and bad.value.code == "bad_context"
        with pytest.raises(kvstore.BadRequest) as bad:
            kv.get("k", r=9)
        assert bad.value.code == "bad_parameter"
        with pytest.raises(kvstore.TooLarge):
            kv.put("big", b"x" * (1024 * 1024 + 1))
        with pytest.raises(kvstore.BadRequest):
            kv.get("")
    with kvstore.Client(f"http://127.0.0.1:{cluster.nodes[0].client_port + 0}", retries=0) as kv:
        assert kv.get(fresh("nothing")) is None
    with pytest.raises(ValueError):
        kvstore.Client("127.0.0.1:8080")


def test_a_node_down_fails_no_request(tmp_path, monkeypatch):
    # Logged at info: a fresh `make test` twice saw every request fail here, with nothing at warn.
    monkeypatch.setenv("KV_TEST_LOG", os.environ.get("KV_TEST_LOG", "info"))
    c = Cluster(tmp_path, gateway=False)
    try:
        with kvstore.Client(c.node_urls, timeout=5.0) as kv:
            kv.put("before", b"1")
            c.nodes[0].kill()  # the client's first endpoint
            slowest, failed, errors = 0.0, 0, []
            for i in range(60):
                started = time.monotonic()
                try:
                    kv.put(f"down-{i}", str(i))
                    assert kv.get(f"down-{i}").values == [str(i).encode()]
                except kvstore.KvError as e:
                    failed += 1
                    errors.append(str(e))
                slowest = max(slowest, time.monotonic() - started)
            if failed:
                survivors = "\n".join(f"== {n.name}:\n{c.diagnose(n)}\n{n.log_tail()}" for n in c.nodes[1:])
                raise AssertionError(f"{failed} of 60 failed, e.g. {errors[:3]}; the survivors' logs:\n{survivors}")
            assert kv.get("before").values == [b"1"]
            assert kv.retried >= 1, "the first call failed over from the dead endpoint"
            print(f"\nnode down: 120 requests, {failed} failed, slowest {slowest * 1000:.0f} ms, "
                  f"{kv.retried} failovers")
    finally:
        c.stop()


def test_retries_honour_retry_after(tmp_path):
    # A cluster that has not formed answers 503 cluster_forming with Retry-After: 1; the
    # client waits and tries again until the second node starts and the cluster forms.
    c = Cluster(tmp_path, nodes=2, gateway=False, started=1)
    try:
        with kvstore.Client(c.nodes[0].url, retries=20) as kv:
            with kvstore.Client(c.nodes[0].url, retries=0) as once:
                with pytest.raises(kvstore.Unavailable) as forming:
                    once.put("k", b"v")
                assert forming.value.code == "cluster_forming"
            starter = threading.Timer(1.5, c.start_rest)
            started = time.monotonic()
            starter.start()
            kv.put("formed", b"yes")
            elapsed = time.monotonic() - started
            starter.join()
            assert kv.get("formed").values == [b"yes"]
            # One endpoint: every retry waited the Retry-After second.
            assert kv.retried >= 1 and elapsed >= kv.retried * 0.9, (kv.retried, elapsed)
            print(f"\nretry-after: put answered after {elapsed:.1f} s and {kv.retried} retries")
    finally:
        c.stop()


def test_tokens_and_tls(secured):
    ca = str(secured.tls.ca)
    with kvstore.Client(secured.gateway.url, ca=ca, retries=0) as anonymous:
        with pytest.raises(kvstore.Unauthorized):
            anonymous.get("k")
    with kvstore.Client(secured.gateway.url, token=TOKENS["read"], ca=ca, retries=0) as reader:
        with pytest.raises(kvstore.Forbidden):
            reader.put("k", b"v")
    with kvstore.Client(secured.node_urls, token=TOKENS["write"], ca=ca) as writer:
        writer.put("k", b"v")
        assert writer.get("k").values == [b"v"]
    with kvstore.Client(secured.gateway.url, token=TOKENS["read"], ca=ca) as reader:
        assert reader.get("k").values == [b"v"]
    # Without the CA the server's certificate is not trusted.
    with kvstore.Client(secured.gateway.url, token=TOKENS["write"], retries=0) as untrusting:
        with pytest.raises(kvstore.TransportError):
            untrusting.get("k")


def test_async_client(cluster):
    async def main():
        # The first endpoint refuses connections: the client fails over.
        dead = "http://127.0.0.1:1"
        async with kvstore.AsyncClient([dead, cluster.gateway.url]) as kv:
            key = fresh("async")
            await kv.put(key, b"a")
            await kv.put(key, b"b")
            value = await kv.get(key)
            assert sorted(value.values) == [b"a", b"b"]
            assert (await kv.resolve(key, lambda v: max(v.values))).values == [b"b"]
            keys = [fresh("many") for _ in range(20)]
            await asyncio.gather(*(kv.put(k, k) for k in keys))
            read = await asyncio.gather(*(kv.get(k) for k in keys))
            assert [r.values for r in read] == [[k.encode()] for k in keys]
            await kv.delete(key)
            assert await kv.get(key) is None
            assert kv.retried >= 1

    asyncio.run(main())


def test_readme_examples_run(cluster):
    """Every ```python block of this README and of the repository's, run against the cluster."""
    import re
    from cluster import ROOT
    readmes = [ROOT / "clients" / "python" / "README.md", ROOT / "README.md"]
    blocks = [b for path in readmes for b in re.findall(r"```python\n(.*?)```", path.read_text(), re.S)]
    assert len(blocks) >= 4
    for block in blocks:
        if "10.0.0.1" in block:  # the failover example names addresses of another network
            continue
        code = block.replace("http://127.0.0.1:8080", cluster.gateway.url)
        exec(compile(code, "README", "exec"), {"__name__": "readme"})

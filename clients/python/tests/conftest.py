"""Fixtures: real clusters (tests/cluster.py), one per module that asks, stopped at the end."""

import pytest

from cluster import Cluster, TestCa

TOKENS = {"read": "reader-0123456789abcdef", "write": "writer-0123456789abcdef"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("plain"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """TLS on every listener and client tokens on."""
    directory = tmp_path_factory.mktemp("secured")
    tokens = directory / "tokens"
    tokens.write_text(f"read {TOKENS['read']} tests\nwrite {TOKENS['write']} tests\n")
    c = Cluster(directory, args=["--client-tokens-file", str(tokens)], tls=TestCa(directory))
    yield c
    c.stop()

"""What the blocking and the asyncio client share: requests built and answers read without I/O,
the values a read returns, the retry policy and the resolvers."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

from . import errors

#: What a merge function returns: the value to write (bytes, or bytes and its content type), or
#: None to delete the key.
Merged = Union[bytes, Tuple[bytes, str], None]

OCTETS = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
#: Longest wait a `Retry-After` can impose, seconds (a bad header must not park the caller).
MAX_RETRY_AFTER = 10.0


@dataclass(frozen=True)
class Sibling:
    """One version of a key."""

    value: bytes
    content_type: str
    #: When it was written (ms since the epoch, by the coordinating node's clock): a hint for
    #: resolvers, not an order. None on a single value (a 200 does not carry it).
    written_at: Optional[int] = None
    #: A delete concurrent with other versions (its value is empty).
    deleted: bool = False


@dataclass(frozen=True)
class Value:
    """What `get` returns for a key that has a live version."""

    key: str
    #: Send it back with `put` or `delete` to replace exactly the versions this read saw.
    context: Optional[str]
    #: Every version, deleted ones included; more than one is a conflict to resolve.
    siblings: Tuple[Sibling, ...]

    @property
    def values(self) -> List[bytes]:
        """The live values: one entry unless there are siblings."""
        return [s.value for s in self.siblings if not s.deleted]

    @property
    def content_types(self) -> List[str]:
        """The content type of each entry of `values`."""
        return [s.content_type for s in self.siblings if not s.deleted]

    @property
    def has_siblings(self) -> bool:
        """Concurrent versions: resolve them (`Client.resolve`) or write with `context`."""
        return len(self.siblings) > 1

    @property
    def value(self) -> bytes:
        """The value, when there is exactly one; `Conflict` when there are siblings."""
        if self.has_siblings:
            raise errors.Conflict(f"{self.key!r} has {len(self.siblings)} siblings: resolve them first",
                                  code="siblings")
        return self.siblings[0].value


def newest_wins(value: Value) -> Merged:
    """A resolver: keeps the sibling written last by its `written_at` (a delete if that one is a
    delete). The times come from the coordinating nodes' clocks, which may differ by up to the
    cluster's `--max-clock-offset`: two writes closer than that may be kept in either order."""
    newest = max(value.siblings, key=lambda s: (s.written_at or 0, not s.deleted))
    return None if newest.deleted else (newest.value, newest.content_type)


@dataclass
class Request:
    """One client-API request, before it is sent to an endpoint."""

    method: str
    path: str
    headers: dict
    body: bytes = b""


def key_path(key: Union[str, bytes]) -> str:
    """`/kv/<key>`, percent-encoded (a `/` in a key is `%2F`)."""
    if isinstance(key, bytes):
        key = key.decode("utf-8")
    if not key:
        raise errors.BadRequest("a key is 1 to 1024 bytes of UTF-8", code="bad_key")
    return "/kv/" + urllib.parse.quote(key, safe="")


def with_params(path: str, **params: Optional[Union[str, int]]) -> str:
    given = {k: str(v) for k, v in params.items() if v is not None}
    return path + ("?" + urllib.parse.urlencode(given) if given else "")


def put_request(key, value, context, w, content_type) -> Request:
    if isinstance(value, str):
        value, content_type = value.encode("utf-8"), content_type or TEXT
    elif not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"a value is bytes or str, not {type(value).__name__}")
    headers = {"content-type": content_type or OCTETS}
    if context:
        headers["x-context"] = context
    return Request("PUT", with_params(key_path(key), w=w), headers, bytes(value))


def delete_request(key, context, w) -> Request:
    headers = {"x-context": context} if context else {}
    return Request("DELETE", with_params(key_path(key), w=w), headers)


def get_request(key, r) -> Request:
    return Request("GET", with_params(key_path(key), r=r), {})


def error_body(text: bytes) -> dict:
    try:
        body = json.loads(text or b"{}")
        return body if isinstance(body, dict) else {}
    except ValueError:
        return {}


def read_get(key: str, status: int, headers, body: bytes, endpoint: str) -> Optional[Value]:
    """The answer to a GET: a Value, None for 404, or the error."""
    key = key.decode("utf-8") if isinstance(key, bytes) else key
    if status == 200:
        sibling = Sibling(body, headers.get("content-type", OCTETS))
        return Value(key, headers.get("x-context"), (sibling,))
    if status == 300:
        doc = json.loads(body)
        siblings = tuple(
            Sibling(base64.b64decode(s.get("value", "")), s.get("content_type", OCTETS), s.get("written_at"),
                    bool(s.get("deleted", False)))
            for s in doc["siblings"])
        return Value(key, doc.get("context") or headers.get("x-context"), siblings)
    if status == 404:
        return None
    raise errors.from_response(status, error_body(body), endpoint)


def read_write(status: int, headers, body: bytes, endpoint: str) -> Optional[str]:
    """The answer to a PUT or DELETE: the new context (None when the write made siblings)."""
    if status == 204:
        return None if headers.get("x-siblings") else headers.get("x-context")
    raise errors.from_response(status, error_body(body), endpoint)


def retry_after(headers) -> Optional[float]:
    """The seconds a `Retry-After` header asks for (capped), if it names a number."""
    try:
        return min(max(float(headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None


def retryable(status: int) -> bool:
    """Answers another attempt may change: 503 (and 502, 504 from a proxy in front)."""
    return status in (502, 503, 504)


def failure_of(response, endpoint: str):
    """None for an answer to return, else the error it is and the wait its `Retry-After` asks."""
    if not retryable(response.status_code):
        return None
    return errors.from_response(response.status_code, error_body(response.content), endpoint), \
        retry_after(response.headers)


def tls_context(ca: Optional[str]) -> Union[ssl.SSLContext, bool]:
    """What httpx verifies servers with: the cluster's CA file, or the system's roots."""
    return ssl.create_default_context(cafile=ca) if ca else True


def endpoints_of(endpoints: Union[str, Sequence[str]]) -> List[str]:
    found = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    found = [e.rstrip("/") for e in found]
    if not found or not all(e.startswith(("http://", "https://")) for e in found):
        raise ValueError(f"endpoints are http(s)://host:port URLs of gateways or nodes, got {endpoints!r}")
    return found


class Policy:
    """Failover and retries: the first endpoint that answers is used until it fails; a failed
    attempt (no connection, a timeout, a 503) moves to the next endpoint at once, and once every
    endpoint failed in a round the client waits, for `Retry-After` when the server said, else
    an exponential backoff, before the next round. `retries` attempts after the first.

    A retried write is a new write: when both attempts were applied a read shows the value
    twice as siblings (docs/api.md), which the next write with the read's context resolves."""

    def __init__(self, endpoints: Sequence[str], retries: int, backoff: float, max_backoff: float):
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.endpoints = list(endpoints)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.current = 0
        #: Attempts after a failure, over the client's life (for tests and metrics).
        self.retried = 0

    def plan(self) -> "Attempts":
        return Attempts(self)


class Attempts:
    """The attempts of one call: `endpoint()` to try next; `failed(delay)` says whether to try
    again and how long to wait first."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.attempt = 0
        self.in_round = 0
        self.round = 0

    def endpoint(self) -> str:
        return self.policy.endpoints[self.policy.current % len(self.policy.endpoints)]

    def failed(self, asked: Optional[float]) -> Optional[float]:
        """After a failed attempt: None to give up, else the seconds to wait (0: at once)."""
        policy = self.policy
        if self.attempt >= policy.retries:
            return None
        self.attempt += 1
        policy.retried += 1
        policy.current = (policy.current + 1) % len(policy.endpoints)
        self.in_round += 1
        if self.in_round < len(policy.endpoints):
            return 0.0
        self.in_round = 0
        self.round += 1
        if asked is not None:
            return asked
        return min(policy.max_backoff, policy.backoff * 2 ** (self.round - 1))


def merged(result: Merged) -> Tuple[Optional[bytes], Optional[str]]:
    """A merge function's result as (value, content type); (None, None) to delete."""
    if result is None:
        return None, None
    if isinstance(result, tuple):
        return bytes(result[0]), result[1]
    if isinstance(result, str):
        return result.encode("utf-8"), TEXT
    return bytes(result), None


MergeFn = Callable[[Value], Merged]

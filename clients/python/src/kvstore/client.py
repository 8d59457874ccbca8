"""`Client` (blocking) and `AsyncClient` (asyncio): the same methods over httpx."""

from __future__ import annotations

import asyncio
import time
from typing import Optional, Sequence, Union

import httpx

from . import _core, errors
from ._core import MergeFn, Value

Endpoints = Union[str, Sequence[str]]

#: How many times `resolve` writes before giving up while new siblings keep appearing.
RESOLVE_ATTEMPTS = 5


def _http_options(token: Optional[str], ca: Optional[str], timeout: float, connect_timeout: float) -> dict:
    headers = {"user-agent": "kvstore-python/0.2.0"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return dict(headers=headers, verify=_core.tls_context(ca),
                timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)))


def _transport_error(endpoint: str, e: Exception) -> errors.TransportError:
    return errors.TransportError(f"{type(e).__name__}: {e}", endpoint=endpoint)


class Client:
    """A blocking client of a kvstore cluster.

    `endpoints`: one URL or several (gateways or nodes, `http://host:port` or `https://`); the
    first that answers is used until it fails, then the next. `token`: a client token
    (`Authorization: Bearer`). `ca`: the cluster's CA file for `https://` endpoints.
    `timeout`: seconds per attempt (a connection must open within `connect_timeout`).
    `retries`: attempts after a failed one (no connection, a timeout, a 503), honouring the
    server's `Retry-After`. A Client is thread-safe; close it (or use `with`) when done.
    """

    def __init__(self, endpoints: Endpoints, token: Optional[str] = None, ca: Optional[str] = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.1, max_backoff: float = 2.0,
                 connect_timeout: float = 2.0):
        self._policy = _core.Policy(_core.endpoints_of(endpoints), retries, backoff, max_backoff)
        self._http = httpx.Client(**_http_options(token, ca, timeout, connect_timeout))

    @property
    def retried(self) -> int:
        """Attempts made after a failed one, over this client's life."""
        return self._policy.retried

    def _send(self, request: _core.Request):
        attempts = self._policy.plan()
        while True:
            endpoint = attempts.endpoint()
            try:
                response = self._http.request(request.method, endpoint + request.path, headers=request.headers,
                                              content=request.body)
            except httpx.TransportError as e:
                failure, asked = _transport_error(endpoint, e), None
            else:
                failed = _core.failure_of(response, endpoint)
                if failed is None:
                    return response, endpoint
                failure, asked = failed
            wait = attempts.failed(asked)
            if wait is None:
                raise failure
            if wait:
                time.sleep(wait)

    def get(self, key: str, r: Optional[Union[int, str]] = None) -> Optional[Value]:
        """The key's value (`.values`, `.context`, `.content_types`), or None when it has none.
        `r`: read quorum for this call (1..N, `one`, `quorum`, `all`)."""
        response, endpoint = self._send(_core.get_request(key, r))
        return _core.read_get(key, response.status_code, response.headers, response.content, endpoint)

    def put(self, key: str, value: Union[bytes, str], context: Optional[str] = None,
            w: Optional[Union[int, str]] = None, content_type: Optional[str] = None) -> Optional[str]:
        """Stores `value` (bytes; a str is stored as UTF-8 text). With `context` (from a read)
        it replaces exactly what that read saw; without, it is kept beside versions it did not
        see. Returns the new version's context, or None when the write left siblings."""
        response, endpoint = self._send(_core.put_request(key, value, context, w, content_type))
        return _core.read_write(response.status_code, response.headers, response.content, endpoint)

    def delete(self, key: str, context: Optional[str] = None, w: Optional[Union[int, str]] = None) -> None:
        """Deletes the key (with `context`: exactly what that read saw)."""
        response, endpoint = self._send(_core.delete_request(key, context, w))
        _core.read_write(response.status_code, response.headers, response.content, endpoint)

    def resolve(self, key: str, merge: MergeFn, w: Optional[Union[int, str]] = None) -> Optional[Value]:
        """Reads the key and, when it has siblings, writes `merge(value)` (bytes, (bytes,
        content type), or None to delete) with the read's context; again if new siblings
        appeared meanwhile. Returns the key's value after it (None if deleted or missing).
        `kvstore.newest_wins` is a ready resolver."""
        for _ in range(RESOLVE_ATTEMPTS):
            value = self.get(key)
            if value is None or not value.has_siblings:
                return value
            data, content_type = _core.merged(merge(value))
            if data is None:
                self.delete(key, context=value.context, w=w)
                return None
            context = self.put(key, data, context=value.context, w=w, content_type=content_type)
            if context is not None:
                return Value(key, context, (_core.Sibling(data, content_type or _core.OCTETS),))
        raise errors.Conflict(f"{key!r}: new siblings kept appearing over {RESOLVE_ATTEMPTS} resolutions",
                              code="siblings")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of `Client`: the same arguments, and the same methods as coroutines."""

    def __init__(self, endpoints: Endpoints, token: Optional[str] = None, ca: Optional[str] = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.1, max_backoff: float = 2.0,
                 connect_timeout: float = 2.0):
        self._policy = _core.Policy(_core.endpoints_of(endpoints), retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(**_http_options(token, ca, timeout, connect_timeout))

    @property
    def retried(self) -> int:
        """Attempts made after a failed one, over this client's life."""
        return self._policy.retried

    async def _send(self, request: _core.Request):
        attempts = self._policy.plan()
        while True:
            endpoint = attempts.endpoint()
            try:
                response = await self._http.request(request.method, endpoint + request.path,
                                                    headers=request.headers, content=request.body)
            except httpx.TransportError as e:
                failure, asked = _transport_error(endpoint, e), None
            else:
                failed = _core.failure_of(response, endpoint)
                if failed is None:
                    return response, endpoint
                failure, asked = failed
            wait = attempts.failed(asked)
            if wait is None:
                raise failure
            if wait:
                await asyncio.sleep(wait)

    async def get(self, key: str, r: Optional[Union[int, str]] = None) -> Optional[Value]:
        """See `Client.get`."""
        response, endpoint = await self._send(_core.get_request(key, r))
        return _core.read_get(key, response.status_code, response.headers, response.content, endpoint)

    async def put(self, key: str, value: Union[bytes, str], context: Optional[str] = None,
                  w: Optional[Union[int, str]] = None, content_type: Optional[str] = None) -> Optional[str]:
        """See `Client.put`."""
        response, endpoint = await self._send(_core.put_request(key, value, context, w, content_type))
        return _core.read_write(response.status_code, response.headers, response.content, endpoint)

    async def delete(self, key: str, context: Optional[str] = None, w: Optional[Union[int, str]] = None) -> None:
        """See `Client.delete`."""
        response, endpoint = await self._send(_core.delete_request(key, context, w))
        _core.read_write(response.status_code, response.headers, response.content, endpoint)

    async def resolve(self, key: str, merge: MergeFn, w: Optional[Union[int, str]] = None) -> Optional[Value]:
        """See `Client.resolve`."""
        for _ in range(RESOLVE_ATTEMPTS):
            value = await self.get(key)
            if value is None or not value.has_siblings:
                return value
            data, content_type = _core.merged(merge(value))
            if data is None:
                await self.delete(key, context=value.context, w=w)
                return None
            context = await self.put(key, data, context=value.context, w=w, content_type=content_type)
            if context is not None:
                return Value(key, context, (_core.Sibling(data, content_type or _core.OCTETS),))
        raise errors.Conflict(f"{key!r}: new siblings kept appearing over {RESOLVE_ATTEMPTS} resolutions",
                              code="siblings")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

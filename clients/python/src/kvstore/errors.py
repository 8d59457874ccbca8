"""Typed errors: one class per kind of answer, each with the server's status, code and message."""

from __future__ import annotations

from typing import Any, Mapping, Optional


class KvError(Exception):
    """Base of every error this client raises."""

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None,
                 body: Optional[Mapping[str, Any]] = None, endpoint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        #: The HTTP status, when a server answered.
        self.status = status
        #: The server's error code (`bad_key`, `quorum_not_met`, ...), when it gave one.
        self.code = code
        #: The whole JSON error body (`required`, `acks`, ... for `quorum_not_met`).
        self.body = dict(body or {})
        #: The endpoint that answered (or failed).
        self.endpoint = endpoint

    def __str__(self) -> str:
        where = f" ({self.endpoint})" if self.endpoint else ""
        if self.status is None:
            return f"{self.message}{where}"
        return f"{self.status} {self.code or ''}: {self.message}{where}"


class BadRequest(KvError):
    """400: a malformed key, parameter, body or context (`bad_key`, `bad_parameter`,
    `bad_context`, `bad_request`). Not retried: the request itself must change."""


class Unauthorized(KvError):
    """401: client tokens are on and the request had no valid token."""


class Forbidden(KvError):
    """403: a write with a read-only token."""


class Conflict(KvError):
    """409: `too_many_siblings` (read, then write with the read's context)."""


class TooLarge(KvError):
    """413: the value is over the cluster's `--max-value-bytes`."""


class Unavailable(KvError):
    """503 after every retry: `quorum_not_met` (the write may still be on the replicas that
    acknowledged it), `overloaded`, `cluster_forming`, `not_serving`, `unavailable`..."""


class TransportError(KvError):
    """No endpoint could be reached (connection refused, reset, timed out, TLS failure)."""


_BY_STATUS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 409: Conflict, 413: TooLarge,
              503: Unavailable}


def from_response(status: int, body: Mapping[str, Any], endpoint: str) -> KvError:
    """The error for a server's answer."""
    cls = _BY_STATUS.get(status, KvError)
    message = str(body.get("message") or f"HTTP {status}")
    return cls(message, status=status, code=body.get("error"), body=body, endpoint=endpoint)

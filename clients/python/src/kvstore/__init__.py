"""Python client for kvstore, a Dynamo-style key-value store.

    import kvstore
    with kvstore.Client(["http://127.0.0.1:8080"]) as kv:
        kv.put("user/42", b'{"name": "Ada"}', content_type="application/json")
        value = kv.get("user/42")          # None when missing
        value.values, value.context        # [b'{"name": "Ada"}'], 'AQ...'
        kv.resolve("user/42", kvstore.newest_wins)

`AsyncClient` has the same methods as coroutines. Errors are `kvstore.KvError` subclasses.
"""

from ._core import Sibling, Value, newest_wins
from .client import AsyncClient, Client
from .errors import (BadRequest, Conflict, Forbidden, KvError, TooLarge, TransportError, Unauthorized,
                     Unavailable)

__version__ = "0.2.0"

__all__ = ["AsyncClient", "BadRequest", "Client", "Conflict", "Forbidden", "KvError", "Sibling", "TooLarge",
           "TransportError", "Unauthorized", "Unavailable", "Value", "newest_wins"]

"""Route `api_key`: a route that requires a known API key in a header, and names the caller's service.

Owns the per-request part of the seed's service-to-service API keys:
- the key is the value of the route's `api_key.header`; a request without it (or with an empty value)
  gets 401 `http_request_denied` (`Cause.API_KEY`), as does one whose key is unknown, and one that carries
  the header more than once (which of them would the application read?); nothing reaches the upstream;
- the allowed keys are never held: only the SHA-256 digest of each, with the service it belongs to
  (`ApiKeys`). The presented key is hashed once and compared with every stored digest in constant time
  (`hmac.compare_digest`, no early exit), so the time taken says nothing about which digest, or how much
  of one, matched;
- a known key's service name goes on the request's record (`api_client`), as a verified peer identity
  does, for the access log and spans.
The keys of one file are an `ApiKeyStore`, whose `keys` are swapped whole when the file changes on disk
(proxy.filters.keysfile reads, checks and watches the file); a request reads `keys` once. The header goes
upstream unchanged (a route's `headers.request.remove` runs after this check and can drop it).
Must not do I/O or log a key, a digest or anything derived from them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.filters.check import RequestCheck
from proxy.local_reply import Cause, LocalReply, local_reply

if TYPE_CHECKING:
    from proxy.config.model import ApiKeyConfig
    from proxy.stream import RequestStream
    from proxy.telemetry.record import RequestRecord


class ApiKeys:
    """The allowed keys of one keys file, as the SHA-256 digests (32 bytes each) of the keys, with the
    service each belongs to (`names[i]` for `digests[i]`)."""

    __slots__ = ("digests", "names")

    def __init__(self, entries: Sequence[tuple[bytes, str]]) -> None:
        self.digests = tuple(digest for digest, _ in entries)
        self.names = tuple(name for _, name in entries)

    def __len__(self) -> int:
        return len(self.digests)

    def lookup(self, presented: bytes) -> str | None:
        """The service whose key `presented` is, or None. Compares against every stored digest, always."""
        digest = hashlib.sha256(presented).digest()
        found = -1
        for index, stored in enumerate(self.digests):
            if hmac.compare_digest(digest, stored):
                found = index
        return self.names[found] if found >= 0 else None


class ApiKeyStore:
    """The keys of one keys file as last read successfully; `keys` is replaced whole when it changes."""

    __slots__ = ("keys", "path")

    def __init__(self, path: str, keys: ApiKeys) -> None:
        self.path = path
        self.keys = keys


class ApiKeyCheck(RequestCheck):
    """A route's `api_key`: a known key in `header`, else 401; the key's service goes on the record."""

    __slots__ = ("header", "missing", "repeated", "store", "unknown")

    def __init__(self, header: bytes, store: ApiKeyStore, route: str) -> None:
        self.header = header
        self.store = store
        name = header.decode("latin-1")
        challenge = b'ApiKey header="' + header + b'"'
        self.missing: LocalReply = local_reply(Cause.API_KEY, f"route {route}: api key missing ({name})",
                                               challenge=challenge)
        self.unknown: LocalReply = local_reply(Cause.API_KEY, f"route {route}: api key unknown",
                                               challenge=challenge)
        self.repeated: LocalReply = local_reply(Cause.API_KEY, f"route {route}: api key sent more than once",
                                                challenge=challenge)

    @classmethod
    def from_config(cls, config: ApiKeyConfig, store: ApiKeyStore, route: str) -> ApiKeyCheck:
        # The model lower-cases header names, as the codec does the request's.
        return cls(config.header.encode("latin-1"), store, route)

    def check(self, stream: RequestStream, record: RequestRecord) -> LocalReply | None:
        wanted = self.header
        presented: bytes | None = None
        for name, value in stream.head.headers:
            if name == wanted:
                if presented is not None:
                    return self.repeated
                presented = value
        if not presented:
            return self.missing
        client = self.store.keys.lookup(presented)
        if client is None:
            return self.unknown
        record.api_client = client
        return None

"""A listener's HTTP settings, compiled once from its `http:` config block.

Owns `ServerSettings`, the values the downstream codec reads per connection and per request (limits,
timers, the listener's scheme and path normalization). A module of its own so that the request path and
the assembly can name a listener's settings without importing the codec (`proxy.http.server`). Must not
hold state.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.http.path import BASE


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """The listener's `http.http2` settings (proxy.http.h2_server reads them per connection)."""

    max_concurrent_streams: int = 100
    initial_stream_window: int = 64 * 1024
    max_resets_per_second: int = 100


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The listener's `http:` settings, compiled once (all durations in seconds, sizes in bytes)."""

    max_head_bytes: int = 60 * 1024
    max_headers: int = 100
    header_read_timeout: float = 10.0
    idle_timeout: float = 300.0
    # No byte moving either way (request body in, response out) for this long: 504, or a reset once the
    # response has started. 0 disables it.
    stream_idle_timeout: float = 300.0
    max_request_body: int = 0
    max_requests_in_flight: int = 10000
    scheme: bytes = b"http"
    path_normalization: int = BASE  # a mode of proxy.http.path
    # HTTP/2 on the same port (prior-knowledge h2c, ALPN h2 under TLS); None: the preface is answered 505.
    http2: Http2Settings | None = None

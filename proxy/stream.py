"""What the request path sees of a request and of an upstream attempt: streams, not HTTP/1 objects.

Owns the interfaces between the request path and the codecs:
- `RequestStream`: one downstream request and the response written back for it (its head, a
  `RequestBody` with backpressure and trailers, answering: a local reply, or a response head, body and
  trailers; reset), plus the two HTTP/1 extras as explicit capabilities: `expect_continue` with
  `send_continue()`, and `websocket` with `start_tunnel()`;
- `RequestBody`: the request body as a stream (attach a sink, replay it on a retry, the one rule of
  whether it can be replayed in full, its trailers);
- `UpstreamStream`: one attempt's stream to an endpoint (send a head and body, await the response head,
  splice the body into the request stream, its trailers, finish or abort);
- the small capabilities they hand each other (`BodySink`, `ReadControl`, `TunnelPeer`, `TunnelEnd`,
  `DownstreamConnection`) and `ResponseReady`, what an attempt learns when a response head arrives.
The HTTP/1 codec (`proxy.http.server`, `proxy.http.client`) implements them; an HTTP/2 codec will
implement the same ones, so the stages above never read framing or HTTP/1-only facts.

Why native base classes for the two per-request types and Protocols for the rest: the request path runs
compiled (mypyc), where a call through a Protocol is a Python-level method lookup but a call through a
native base class is a vtable call and its attributes are struct fields. The upstream stream is an
`asyncio.Protocol` subclass, which mypyc cannot make native anyway. Must not do I/O itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from mypy_extensions import trait

from proxy.message import Headers, RequestHead, ResponseHead

if TYPE_CHECKING:
    import asyncio

    from proxy.local_reply import LocalReply

# `UpstreamStream.send(length=NO_BODY)`: the request has no body (a None length is a body of unknown
# length, which HTTP/1 sends chunked).
NO_BODY = -1


class ReadControl(Protocol):
    """The other side's reading, paused while our write buffer is full."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class BodySink(Protocol):
    """Where request body bytes go once an upstream is attached."""

    def write_body(self, data: bytes) -> None: ...
    def end_body(self, trailers: Headers | None) -> None: ...


class TunnelPeer(Protocol):
    """The upstream end of an upgraded (WebSocket) connection."""

    def tunnel_write(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...
    def tunnel_close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class TunnelEnd(Protocol):
    """The downstream end of an upgraded connection, as the upstream side writes into it."""

    @property
    def write_paused(self) -> bool: ...

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class DownstreamConnection(Protocol):
    """A client connection as its listener sees it: asked to drain, or reset when draining took too long."""

    def drain(self) -> None: ...
    def abort(self) -> None: ...


class ResponseReady:
    """What an attempt learns when the response head has arrived."""

    __slots__ = ("content_length", "head", "no_body")

    def __init__(self, head: ResponseHead, content_length: int | None, no_body: bool) -> None:
        self.head = head
        self.content_length = content_length
        self.no_body = no_body


class RequestBody:
    """A request body as the request path sees it; the codec's body implements the methods.

    `length` is None when unknown in advance (streamed); `received` counts bytes so far; `trailers` are the
    trailer fields that ended it (None: none), set once it is `complete`.
    """

    __slots__ = ("complete", "length", "received", "trailers")

    def __init__(self, length: int | None) -> None:
        self.length = length
        self.complete = False
        self.received = 0
        self.trailers: Headers | None = None

    def attach(self, sink: BodySink) -> None:
        """Send what arrived so far to `sink`, then stream the rest (and the trailers) to it."""
        raise NotImplementedError

    def reattach(self, sink: BodySink) -> bool:
        """Replay the kept body to a new sink for a retry; False when it cannot be replayed."""
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError

    def keep_for_replay(self, limit: int) -> None:
        """Keep up to `limit` bytes from the start so that a retry can send the body again."""
        raise NotImplementedError

    def take_complete(self) -> bytes | None:
        """The whole body when it has already arrived and nothing was sent (then marked sent); else None."""
        raise NotImplementedError

    def can_replay(self) -> bool:
        """Can the body be sent again in full? The one replay rule: only when every byte so far was kept."""
        raise NotImplementedError


class RequestStream:
    """One downstream request and the response written back for it; the codec's exchange implements it.

    The request path reads `head`, `body`, `request_id`, `peer_ip` and `started_at`; `response_started`,
    `response_done` and `response_status` say how far the answer got. `task` is the handler task; `local`,
    `timed_out` and `expired` are how the codec and the path's deadlines cancel it (see the request path).
    """

    __slots__ = ("body", "expect_continue", "expired", "head", "local", "peer_ip", "request_id", "response_done",
                 "response_started", "response_status", "started_at", "task", "timed_out", "upstream_reader",
                 "websocket")

    def __init__(self, head: RequestHead, body: RequestBody | None, request_id: bytes, peer_ip: bytes,
                 started_at: float) -> None:
        self.head = head
        self.body = body
        self.request_id = request_id
        self.peer_ip = peer_ip
        self.started_at = started_at
        # Capabilities of HTTP/1 requests: the client waits for `100 Continue`; a WebSocket handshake.
        self.expect_continue = False
        self.websocket = False
        # A reply decided by the codec itself, sent when the codec cancels a running handler.
        self.local: LocalReply | None = None
        self.timed_out = False
        self.task: asyncio.Task[None] | None = None
        # Which deadline of the request path cancelled the handler (None: none did).
        self.expired: object = None
        self.response_started = False
        self.response_done = False
        self.response_status = 0
        # The upstream whose response streams into this one (paused while the client is behind).
        self.upstream_reader: ReadControl | None = None

    @property
    def write_paused(self) -> bool:
        """The client is behind on reading: an upstream attached now starts paused."""
        raise NotImplementedError

    @property
    def reader(self) -> ReadControl:
        """The client's reading, for an upstream whose write buffer fills with the request body."""
        raise NotImplementedError

    @property
    def tunnel_end(self) -> TunnelEnd:
        """The client connection, for the upstream side of a tunnel after a 101."""
        raise NotImplementedError

    def send_local(self, reply: LocalReply) -> None:
        """Answer with a reply the sidecar made itself (a reset when a response has started)."""
        raise NotImplementedError

    def send_continue(self) -> None:
        """Tell a client waiting on `Expect: 100-continue` to send its body."""
        raise NotImplementedError

    def start_response(self, head: ResponseHead, content_length: int | None, no_body: bool,
                       first: bytes = b"") -> None:
        """Write the response head (and `first` body bytes); `content_length` None: length unknown."""
        raise NotImplementedError

    def write_body(self, data: bytes) -> None:
        raise NotImplementedError

    def end_response(self, trailers: Headers | None = None) -> None:
        """The response is complete, with these trailer fields (dropped where the client cannot take them)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Reset the client: the response cannot be completed."""
        raise NotImplementedError

    def start_tunnel(self, peer: TunnelPeer) -> None:
        """After a 101: splice raw bytes between the client and `peer`."""
        raise NotImplementedError


@trait
class UpstreamStream:
    """One attempt's stream to an endpoint (the pool hands it out ready to send); after a 101 it is the
    upstream end of the tunnel. A codec's upstream connection inherits it (a mypyc trait: the request path's
    calls dispatch natively, where a Protocol's would be Python-level lookups, about 3k instructions a
    request). It is a `BodySink` and a `TunnelPeer`, and carries what its pool keeps it by: `closed`,
    `requests_sent`, and the pool's `on_idle` / `on_lost` hooks."""

    context: str
    closed: bool
    requests_sent: int
    on_idle: Callable[[Any], None] | None
    on_lost: Callable[[Any], None] | None

    @property
    def trailers(self) -> Headers | None:
        """The response's trailer fields, once the response is complete (None when it had none)."""
        raise NotImplementedError

    def send(self, head: RequestHead, extra: tuple[bytes, bytes], length: int | None, whole: bytes | None,
             trailers: Headers | None, upgrade: bool) -> None:
        """Write the request head (framed for `length`: NO_BODY, None for unknown, or bytes) with the `extra`
        header, the WebSocket handshake headers for `upgrade`, and the whole body and trailers when known."""
        raise NotImplementedError

    async def response_head(self) -> ResponseReady:
        raise NotImplementedError

    def take_body(self) -> bytes:
        raise NotImplementedError

    def attach(self, downstream: RequestStream) -> bool:
        """Stream the rest of the response body into `downstream`; True when the response is complete."""
        raise NotImplementedError

    async def response_done(self) -> None:
        raise NotImplementedError

    def finish(self, reusable: bool) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def set_body_reader(self, reader: ReadControl | None) -> None:
        raise NotImplementedError

    def start_tunnel(self, downstream: TunnelEnd) -> None:
        raise NotImplementedError

    # BodySink
    def write_body(self, data: bytes) -> None:
        raise NotImplementedError

    def end_body(self, trailers: Headers | None) -> None:
        raise NotImplementedError

    # TunnelPeer
    def tunnel_write(self, data: bytes) -> None:
        raise NotImplementedError

    def tunnel_eof(self) -> None:
        raise NotImplementedError

    def tunnel_close(self) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

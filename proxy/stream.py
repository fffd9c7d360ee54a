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
- the one cancellation protocol: whoever stops a request (the client leaving, the stream idle timer, a
  body error, the route or per-try deadline) calls `RequestStream.cancel(reason, reply)` with a
  `CancelReason`; the strongest reason wins, and `RequestStream.answer_cancelled()` is the one function
  that turns it into the local reply (before the response started) or a reset (after);
- the small capabilities they hand each other (`BodySink`, `ReadControl`, `TunnelPeer`, `TunnelEnd`,
  `DownstreamConnection`) and `ResponseReady`, what an attempt learns when a response head arrives;
- `ByteCounter`: where a connection reports the bytes it moved (the metrics implement it).
The HTTP/1 codec (`proxy.http.server`, `proxy.http.client`) implements them; an HTTP/2 codec will
implement the same ones, so the stages above never read framing or HTTP/1-only facts.

Why native base classes for the two per-request types and Protocols for the rest: the request path runs
compiled (mypyc), where a call through a Protocol is a Python-level method lookup but a call through a
native base class is a vtable call and its attributes are struct fields. The upstream stream is an
`asyncio.Protocol` subclass, which mypyc cannot make native anyway. Must not do I/O itself.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from mypy_extensions import mypyc_attr, trait

from proxy.local_reply import grpc_shaped
from proxy.message import Headers, RequestHead, ResponseHead

if TYPE_CHECKING:
    import asyncio

    from proxy.local_reply import LocalReply

# `UpstreamStream.send(length=NO_BODY)`: the request has no body (a None length is a body of unknown
# length, which HTTP/1 sends chunked).
NO_BODY = -1

# The status a request counts as when its client left before the answer (nginx's convention).
CLIENT_CLOSED: Final = 499


class CancelReason(IntEnum):
    """Why a request's handler was stopped, weakest first: a stronger reason replaces a weaker one that is
    still pending (a route deadline replaces a per-try one; a client that left outranks everything, since
    nobody is left to answer)."""

    TRY_DEADLINE = 1  # the attempt's per-try timeout: the retry loop handles it, the client never sees it
    ROUTE_DEADLINE = 2  # the route's timeout: 504, or a reset once the response started
    STREAM_IDLE = 3  # no byte moved for stream_idle_timeout: 504, or a reset
    BODY_ERROR = 4  # a malformed, oversize or truncated request body or trailers: 400/413/431, or a reset
    CLIENT_GONE = 5  # the client closed its connection: nothing to answer


TRY_DEADLINE: Final = CancelReason.TRY_DEADLINE
ROUTE_DEADLINE: Final = CancelReason.ROUTE_DEADLINE
STREAM_IDLE: Final = CancelReason.STREAM_IDLE
BODY_ERROR: Final = CancelReason.BODY_ERROR
CLIENT_GONE: Final = CancelReason.CLIENT_GONE


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


@mypyc_attr(allow_interpreted_subclasses=True)
class ByteCounter:
    """Where a connection reports the bytes it read (`rx`) and wrote (`tx`) since it last reported: its codec
    counts in plain integers and reports once per response and once as it closes. A native base class, so
    that report is a vtable call from the compiled codec, not a Protocol's Python-level lookup. This base
    counts nothing (the admin port's connections, tests); the metrics' `ListenerTraffic` and
    `ClusterTraffic` add to counters."""

    __slots__ = ()

    def add(self, rx: int, tx: int) -> None:
        pass


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

    The request path reads `head`, `body`, `peer_ip`, `peer_identity`, `forwarded_client_cert` and `started_at`,
    and stamps `request_id` (the edge does); `response_started`, `response_done`, `response_status`, `aborted`
    and `bytes_out` say how far the answer got. `task` is the handler task; `cancel_reason` and `cancel_reply`
    are the pending cancellation (see `cancel`).
    """

    __slots__ = ("aborted", "body", "bytes_out", "cancel_reason", "cancel_reply", "expect_continue",
                 "forwarded_client_cert", "grpc", "head", "peer_identity", "peer_ip", "request_id", "response_done",
                 "response_started", "response_status", "started_at", "task", "upstream_reader", "websocket")

    def __init__(self, head: RequestHead, body: RequestBody | None, peer_ip: bytes, started_at: float,
                 peer_identity: str = "", forwarded_client_cert: bytes = b"") -> None:
        self.head = head
        self.body = body
        self.request_id = b""
        self.peer_ip = peer_ip
        # The caller's verified identity (a SPIFFE ID from its client certificate, read once per connection by
        # a TLS listener; "" without one), for routing, authorization, rate-limit keys and the record.
        self.peer_identity = peer_identity
        # The `x-forwarded-client-cert` value the edge gives this request (made once per connection by an
        # mTLS listener; b"": none, and any copy the client sent is removed all the same).
        self.forwarded_client_cert = forwarded_client_cert
        self.started_at = started_at
        # Capabilities of HTTP/1 requests: the client waits for `100 Continue`; a WebSocket handshake.
        self.expect_continue = False
        self.websocket = False
        # A gRPC call (content-type application/grpc*, set by a codec that carries gRPC: HTTP/2): its answers
        # are classified by grpc-status, its local replies are gRPC-shaped, its grpc-timeout caps its deadline.
        self.grpc = False
        self.task: asyncio.Task[None] | None = None
        # Why the handler was stopped, and the reply that reason calls for (None: a reset, or nothing).
        self.cancel_reason: CancelReason | None = None
        self.cancel_reply: LocalReply | None = None
        self.response_started = False
        self.response_done = False
        self.response_status = 0
        self.aborted = False
        # Response body bytes written to the client (a local reply's included).
        self.bytes_out = 0
        # The upstream whose response streams into this one (paused while the client is behind).
        self.upstream_reader: ReadControl | None = None

    def cancel(self, reason: CancelReason, reply: LocalReply | None = None) -> None:
        """Stop the handler for `reason`; `reply` is the answer it calls for while no response has started.

        The one call every canceller makes. A reason no stronger than the pending one is ignored; a stronger
        one replaces it without cancelling the task twice (its one pending cancellation now means the
        stronger reason). The handler then calls `answer_cancelled`, or `cancel_handled` for a reason it
        recovers from (a per-try deadline).
        """
        current = self.cancel_reason
        if current is not None and current >= reason:
            return
        self.cancel_reason = reason
        self.cancel_reply = reply
        task = self.task
        if current is None and task is not None and not task.done():
            task.cancel()

    def cancel_handled(self) -> None:
        """The handler recovered from its cancellation (a per-try deadline): later ones may come."""
        self.cancel_reason = None
        self.cancel_reply = None
        if self.task is not None:
            self.task.uncancel()

    def answer_cancelled(self) -> int:
        """The one place a cancelled request is answered: its reply while no response has started, else a
        reset. Returns the status the request counts as (what the client got, 504 for a stream idle
        timeout, 499 when nobody was left to answer)."""
        reason = self.cancel_reason
        if self.response_done:
            return CLIENT_CLOSED  # the client left (or was already reset): nothing can be sent
        reply = self.cancel_reply
        if reply is not None and not self.response_started:
            return self.send_reply(reply)
        self.abort()
        if reason is STREAM_IDLE:
            return 504
        if reason is ROUTE_DEADLINE or reason is TRY_DEADLINE:
            return self.response_status
        return CLIENT_CLOSED

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

    def send_reply(self, reply: LocalReply) -> int:
        """Answer with a local reply shaped for this caller (a gRPC caller's as a gRPC status: HTTP 200,
        trailers-only); the HTTP status it carries."""
        if self.grpc:
            reply = grpc_shaped(reply)
        self.send_local(reply)
        return reply.head.status

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
    # Bytes read from and written to the upstream (heads, bodies, framing, tunnelled; after TLS) that the
    # pool has not yet added to its cluster's counters (it does when the stream comes back, and when it closes).
    rx: int
    tx: int
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

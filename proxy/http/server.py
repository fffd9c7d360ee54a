"""The downstream side of HTTP/1.1: one `ServerConnection` (an asyncio.Protocol) per accepted socket.

Owns parsing requests with httptools (llhttp, strict), keep-alive, pipelining (answers in request order),
head limits and hostile-input refusal, the header-read, idle and stream-idle timers (one lazily re-armed
timer per connection, none per request), request body streaming with backpressure, response framing
towards the client, and tunnelling after an upgrade. Each parsed request becomes an `Exchange` handed to
the listener's handler coroutine; the handler decides what to answer. What a parsed head means (version,
target, Host, framing, which headers go on) is decided by `proxy.http.request_head`, a pure function.
Requests the codec refuses itself (protocol errors, a declared body over the limit, CONNECT) go to the
listener's `refuse`, which stamps the request id and answers; its own timers and body errors stop a
running handler through `RequestStream.cancel`. Must not know routes, clusters or policy, or make request
ids (the request path's edge does).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import httptools

from proxy.http.h2_engine import PREFACE
from proxy.http.h2_server import H2Listener, Http2Connection
from proxy.http.headers import (
    chunk,
    content_length_line,
    last_chunk,
    serialize_response,
    trailer_fields,
)
from proxy.http.request_head import BadRequest, accept_head
from proxy.http.settings import ServerSettings
from proxy.local_reply import Cause, LocalReply, local_reply
from proxy.message import Headers, RequestHead, ResponseHead
from proxy.stream import (
    BODY_ERROR,
    CLIENT_GONE,
    STREAM_IDLE,
    BodySink,
    ByteCounter,
    CancelReason,
    ReadControl,
    RequestBody,
    RequestStream,
    TunnelEnd,
    TunnelPeer,
)

log = logging.getLogger("proxy.http.server")

# Request-body bytes buffered per exchange before the client's socket stops being read.
BODY_HIGH_WATER = 256 * 1024
# Pipelined requests parsed ahead of the one being answered before reading pauses.
MAX_QUEUED = 32
# A read larger than this is parsed in slices of this size, stopping as soon as reading is blocked: one
# 256 KiB read of tiny pipelined requests would otherwise queue ~10,000 of them at once. The rest waits,
# unparsed, until reading resumes.
PARSE_SLICE = 16 * 1024
# The first line of the HTTP/2 connection preface. llhttp recognises it as the method PRI wherever it is cut
# (its error is then answered 505, not 400).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n"


class Listener(Protocol):
    """What a connection needs from its listener: the current handler (swapped on reload) and counters."""

    settings: ServerSettings
    in_flight: int

    def handle(self, exchange: Exchange) -> Awaitable[None]: ...
    def refuse(self, exchange: Exchange, reply: LocalReply | None) -> None:
        """Answer a request no handler runs for: `reply` (a malformed or refused request), or, with None,
        the cancellation that stopped its handler before its first step (`answer_cancelled`)."""
    def connection_opened(self, conn: ServerConnection) -> None: ...
    def connection_closed(self, conn: ServerConnection) -> None: ...

    @property
    def traffic(self) -> ByteCounter:
        """Where connections report their bytes: after each response, and once more as they close (before
        `connection_closed`). Read once per connection."""


class Http1RequestBody(RequestBody):
    """A request body flowing from the client to (at most one at a time) upstream sink.

    Bytes that arrive before a sink is attached are buffered; past BODY_HIGH_WATER the client socket is
    paused. Up to `replay_limit` bytes are also kept so a retry can send the body again.
    """

    __slots__ = ("_buffered", "_buffered_size", "_conn", "_sink", "chunked", "failed", "kept", "replay_limit",
                 "replayable")

    def __init__(self, conn: ServerConnection, length: int | None, chunked: bool) -> None:
        super().__init__(length)
        self._conn = conn
        self.chunked = chunked
        self.failed = False
        self._sink: BodySink | None = None
        self._buffered: list[bytes] = []
        self._buffered_size = 0
        self.replay_limit = 0
        self.kept: list[bytes] | None = None
        self.replayable = True

    def keep_for_replay(self, limit: int) -> None:
        """Keep up to `limit` bytes (from the start) so the body can be sent again on a retry."""
        self.replay_limit = limit
        if self.kept is None:
            if self.received > limit or self.received != self._buffered_size:
                # Too much already, or bytes already sent to a sink and not kept: a replay would be short.
                self.kept = []
                self.replayable = False
            else:
                # What arrived before the first try is still buffered: it is the start of the replay.
                self.kept = list(self._buffered)

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.kept is not None and self.replayable:
            if self.received <= self.replay_limit:
                self.kept.append(data)
            else:
                self.replayable = False
                self.kept = None
        sink = self._sink
        if sink is not None:
            sink.write_body(data)
            return
        self._buffered.append(data)
        self._buffered_size += len(data)
        if self._buffered_size > BODY_HIGH_WATER:
            self._conn.pause_for_body()

    def finish(self, trailers: Headers | None = None) -> None:
        self.complete = True
        self.trailers = trailers
        if self._sink is not None:
            self._sink.end_body(trailers)

    def attach(self, sink: BodySink) -> None:
        """Send what arrived so far to `sink`, then stream the rest to it as it arrives."""
        self._sink = sink
        if self._buffered:
            chunks, self._buffered, self._buffered_size = self._buffered, [], 0
            for piece in chunks:
                sink.write_body(piece)
            self._conn.resume_for_body()
        if self.complete:
            sink.end_body(self.trailers)

    def reattach(self, sink: BodySink) -> bool:
        """Attach a new sink for a retry, replaying the kept bytes; False when the body cannot be replayed."""
        if self.kept is None or not self.replayable:
            return False
        self._sink = sink
        for piece in self.kept:
            sink.write_body(piece)
        if self._buffered:
            # Bytes buffered while detached are already in `kept` (feed keeps before buffering).
            self._buffered, self._buffered_size = [], 0
            self._conn.resume_for_body()
        if self.complete:
            sink.end_body(self.trailers)
        return True

    def detach(self) -> None:
        self._sink = None

    def can_replay(self) -> bool:
        kept = self.kept
        if kept is None or not self.replayable:
            return False
        # A replay that misses bytes would send a truncated body under the original framing (a request the
        # upstream waits on forever, or a different one): refuse the retry rather than send it.
        return sum(map(len, kept)) == self.received

    def buffered(self) -> bytes:
        """The whole body when it has already arrived and nothing was sent (the small-request fast path)."""
        if len(self._buffered) == 1:
            return self._buffered[0]
        return b"".join(self._buffered)

    def take_complete(self) -> bytes | None:
        """If the body is complete and unsent, hand it over whole (one write upstream) and mark it sent."""
        if not self.complete or self._sink is not None:
            return None
        data = self.buffered()
        self._buffered, self._buffered_size = [], 0
        return data


class Exchange(RequestStream):
    """One request on a downstream connection and the response written back for it (HTTP/1.1)."""

    __slots__ = (
        "_chunked_out",
        "close_after",
        "conn",
        "h1_body",
        "handler_started",
        "head_only",
        "http_minor",
        "last_activity",
        "local",
    )

    def __init__(self, conn: ServerConnection, head: RequestHead, body: Http1RequestBody | None,
                 started_at: float, keep_alive: bool = True, http_minor: int = 1) -> None:
        peer = conn.peer  # one attribute read of the (non-native) connection; the rest are struct fields
        super().__init__(head, body, peer.ip, started_at, peer.identity, peer.client_cert)
        # The same body as `body`, typed as the codec's own (which it feeds and ends).
        self.h1_body = body
        self.conn = conn
        self.head_only = head.method == b"HEAD"
        # A reply decided by the codec, sent in turn instead of running the handler (a malformed request,
        # 413 on a declared length, 405 CONNECT), through the listener's `refuse`.
        self.local: LocalReply | None = None
        # The last time a byte moved for this request (body in, response out): the stream idle timer's base.
        # The connection sets it when the handler starts.
        self.last_activity = started_at
        # Set by the handler's first step: until then a cancel would end its task without running any of it.
        self.handler_started = False
        # HTTP/1 facts of this request, the codec's alone (the heads above it are protocol-independent).
        self.close_after = not keep_alive
        self.http_minor = http_minor
        self._chunked_out = False

    @property
    def write_paused(self) -> bool:
        return self.conn.write_paused

    @property
    def reader(self) -> ReadControl:
        return self.conn

    @property
    def tunnel_end(self) -> TunnelEnd:
        return self.conn

    # -- answering -------------------------------------------------------------------------------

    def send_local(self, reply: LocalReply) -> None:
        """Answer with a reply the sidecar made itself (see local_reply)."""
        if self.response_started:
            self.abort()
            return
        if reply.close:
            self.close_after = True
        # A closing reply's head already says `connection: close` (local_reply writes it).
        self._write_head(reply.head, b"", b"" if self.head_only else reply.body, reply.close)
        self._finish()

    def send_continue(self) -> None:
        """Tell a client waiting on `Expect: 100-continue` to send its body."""
        if self.expect_continue and not self.response_started:
            self.expect_continue = False
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def start_response(self, head: ResponseHead, content_length: int | None, no_body: bool,
                       first: bytes = b"") -> None:
        """Write the response head; `content_length` None means length unknown (chunked downstream)."""
        status = head.status
        if status == 101:
            self._write_head(head, b"")
            return
        if no_body or self.head_only or status in (204, 304) or status < 200:
            if content_length is not None and (self.head_only or status == 304):
                extra = content_length_line(content_length)
            else:
                extra = b""
            self._write_head(head, extra)
            return
        if content_length is not None:
            extra = content_length_line(content_length)
        elif self.http_minor >= 1:
            extra = b"transfer-encoding: chunked\r\n"
            self._chunked_out = True
        else:
            # An HTTP/1.0 client without a length: the end of the body is the end of the connection.
            extra = b""
            self.close_after = True
        if first and self._chunked_out:
            first = chunk(first)
        # Head and the body bytes already at hand go out in one write: one syscall per small response.
        self._write_head(head, extra, first)

    def _write_head(self, head: ResponseHead, extra: bytes, first: bytes = b"", says_close: bool = False) -> None:
        self.response_started = True
        self.response_status = head.status
        self.last_activity = self.conn.now()
        if self.websocket and head.status != 101:
            # Parsing stopped at the handshake (what follows was to be tunnel bytes): without the
            # upgrade, the stream position is unknown, so this answer is the connection's last.
            self.close_after = True
        if first:
            self.bytes_out += len(first)
        extra += b"x-request-id: " + self.request_id + b"\r\n"
        if self.close_after or self.conn.draining:
            self.close_after = True
            if not says_close:
                extra += b"connection: close\r\n"
        elif self.http_minor == 0:
            extra += b"connection: keep-alive\r\n"
        self.conn.write(serialize_response(head, extra, first))

    def write_body(self, data: bytes) -> None:
        self.last_activity = self.conn.now()
        self.bytes_out += len(data)
        if self._chunked_out:
            if data:
                self.conn.write(chunk(data))
        else:
            self.conn.write(data)

    def end_response(self, trailers: Headers | None = None) -> None:
        """The response is complete; its trailer fields go out when it is chunked (HTTP/1.1 clients)."""
        if self._chunked_out:
            self.conn.write(last_chunk(trailers))
        self._finish()

    def _finish(self) -> None:
        if not self.response_done:
            self.response_done = True
            self.conn.exchange_done(self)

    def abort(self) -> None:
        """Reset the client connection: the response cannot be completed (the client sees it broken)."""
        self.response_done = True
        self.aborted = True
        self.conn.abort()

    def start_tunnel(self, peer: TunnelPeer) -> None:
        """After a 101 has been written: splice raw bytes between the client and `peer`."""
        self.response_done = True
        self.conn.start_tunnel(peer)


class _HeadTooLarge(Exception):
    """Raised inside parser callbacks to stop parsing an oversize head (answered with 431)."""


class _StopParsing(Exception):
    """Raised inside parser callbacks once the codec has queued its own final answer."""


class _TrailersTooLarge(Exception):
    """Raised inside on_header for request trailers over the head bounds (431, the body is refused)."""


# Reasons the client socket is not being read (a bit each); reading resumes when none is left.
_BLOCK_BODY = 1
_BLOCK_QUEUE = 2
_BLOCK_UPSTREAM = 4
_BLOCK_STOPPED = 8
# Our write buffer to the client is over its high-water mark: a client that does not read its answers
# must not make us parse (and answer) more requests, as nginx does.
_BLOCK_WRITE = 16


class ConnectionPeer:
    """The other end of a downstream connection, as each of its requests is told (a native class: the codec
    reads its fields per request as struct fields, where the connection's own attributes are dict-free but
    generic lookups)."""

    __slots__ = ("client_cert", "identity", "ip")

    def __init__(self) -> None:
        self.ip = b""
        self.identity = ""
        self.client_cert = b""


class ServerConnection(asyncio.Protocol):
    """One client connection: parse, queue, hand each request to the listener's handler in order."""

    __slots__ = (
        "_blocks",
        "_closing",
        "_early",
        "_eof",
        "_head_bytes",
        "_head_fed",
        "_head_start",
        "_header_count",
        "_headers",
        "_in_head",
        "_in_trailers",
        "_keep_half_open",
        "_loop",
        "_paused_at",
        "_pending",
        "_pending_scheduled",
        "_preface",
        "_queue",
        "_resume_body",
        "_stopped",
        "_task",
        "_timer",
        "_traffic",
        "_trailer_bytes",
        "_trailer_count",
        "_trailers",
        "_tunnel",
        "_unparsed",
        "_url",
        "active",
        "draining",
        "idle_since",
        "listener",
        "now",
        "parser",
        "peer",
        "rx",
        "transport",
        "tx",
        "write_paused",
    )

    def __init__(self, listener: Listener, loop: asyncio.AbstractEventLoop) -> None:
        self.listener = listener
        self._loop = loop
        # Bound once per connection: exchanges stamp their activity with it (no frame of our own per call).
        self.now = loop.time
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # Who is at the other end, for every request of the connection (its address; with TLS, the identity
        # the acceptor read from its certificate: see `identify`).
        self.peer = ConnectionPeer()
        # What eof_received answers when this protocol closes the connection itself: True (keep the socket
        # open until we close it) on TCP; None under TLS, where a close_notify ends the connection whatever the
        # answer (uvloop warns about a True there). connection_made decides.
        self._keep_half_open: bool | None = True
        self._url = b""
        self._headers: Headers = []
        self._head_bytes = 0
        self._head_fed = 0
        self._header_count = 0
        self._in_head = False
        self._in_trailers = False
        self._trailer_bytes = 0
        self._trailer_count = 0
        self._trailers: Headers | None = None
        # Bytes fed after a head that the parser has not handed over yet (a chunk-size line with endless
        # extensions, or one endless trailer line): bounded like a head.
        self._unparsed = 0
        self._head_start = 0.0
        # Received bytes not parsed yet because reading was blocked mid-read (see PARSE_SLICE).
        self._pending = b""
        self._pending_scheduled = False
        # When our write buffer last went over its high-water mark (the stalled-writer deadline's base).
        self._paused_at = 0.0
        # True while a synthetic head is being fed to resume a body after a dropped Upgrade.
        self._resume_body = False
        self._queue: deque[Exchange] = deque()
        self.active: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stopped = False
        self._blocks = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tunnel: TunnelPeer | None = None
        self._early = b""
        self._eof = False
        # The first bytes of a connection while they may still be the HTTP/2 preface (None: HTTP/1, decided).
        self._preface: bytes | None = None
        self.draining = False
        # Our socket's write buffer is over its high-water mark: an upstream attached now starts paused.
        self.write_paused = False
        self.idle_since = loop.time()
        # Bytes read and written (heads, bodies, framing, tunnelled; after TLS) not yet reported to the
        # listener: plain integer adds per read and write, reported per response and at close.
        self.rx = 0
        self.tx = 0
        self._traffic = listener.traffic

    def identify(self, identity: str, client_cert: bytes) -> None:
        """A TLS listener's acceptor, before connection_made: the peer's SPIFFE ID ("" without one) and the
        `x-forwarded-client-cert` value (b"" for none), read once per connection, given to every request."""
        self.peer.identity = identity
        self.peer.client_cert = client_cert

    # -- transport events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if transport.get_extra_info("sslcontext") is not None:
            self._keep_half_open = None
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer.ip = str(peer[0]).encode()
        if self.listener.settings.http2 is not None:
            self._preface = b""
        self.listener.connection_opened(self)
        self._arm_at(self._loop.time() + self.listener.settings.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tunnel is not None:
            self._tunnel.tunnel_close()
            self._tunnel = None
        self._traffic.add(self.rx, self.tx)
        self.rx = self.tx = 0
        self.listener.connection_closed(self)
        # The client went away mid-request (or we closed an idle one): its handler stops its work.
        self._client_gone("closed its connection")

    def data_received(self, data: bytes) -> None:
        self.rx += len(data)
        if self._preface is not None:
            data = self._preface + data
            if len(data) < len(PREFACE) and PREFACE.startswith(data):
                self._preface = data  # maybe the HTTP/2 preface, cut: wait for the rest
                return
            self._preface = None
            if data.startswith(PREFACE):
                self._to_http2(data)
                return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        """Bytes read (or held back and now due): the tunnel's, or HTTP/1.1 to parse."""
        if self._tunnel is not None:
            self._tunnel.tunnel_write(data)
            return
        if self._stopped:
            if self.active is not None and self.active.websocket:
                self._early += data  # tunnel bytes sent before the upstream's 101 arrived
            return
        if self._pending:
            # Reading resumed before the held-back bytes were parsed: they come first.
            data, self._pending = self._pending + data, b""
        self._parse(data)

    def _to_http2(self, data: bytes) -> None:
        """The client speaks HTTP/2 (its preface came first): the HTTP/2 codec takes the transport over."""
        transport = self.transport
        if transport is None:
            return
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.listener.connection_closed(self)
        self.rx = self.tx = 0  # the HTTP/2 connection counts these bytes (it is handed them) and what follows
        peer = self.peer
        conn = Http2Connection(cast(H2Listener, self.listener), self._loop, peer.ip, peer.identity, peer.client_cert)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(data)

    def _parse(self, data: bytes) -> None:
        size = len(data)
        if size <= PARSE_SLICE:
            self._feed(data)
        else:
            view = memoryview(data)
            pos = 0
            while pos < size:
                self._feed(view[pos:pos + PARSE_SLICE])
                pos += PARSE_SLICE
                if self._blocks or self._closing:
                    break
            if pos < size and not self._closing:
                rest = bytes(view[pos:])
                if self._stopped:
                    self._receive(rest)  # tunnel bytes after a handshake, or dropped after an error
                else:
                    self._pending += rest
        # Handlers start only once the whole read is parsed: a framing error later in the same read then
        # finds the request's handler not started, and is answered without anything going upstream.
        active = self.active
        if active is not None and self._task is None and not self._closing:
            self._start_handler(active)

    def _feed(self, data: bytes | memoryview) -> None:
        if self._in_head:
            # llhttp hands a header line over only once it is complete: a line that never ends would
            # be buffered without bound. Count the bytes of chunks that arrive mid-head instead.
            self._head_fed += len(data)
        elif self._in_trailers:
            self._unparsed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade(bytes(data[upgrade.args[0]:]))
        except httptools.HttpParserCallbackError as exc:
            self._callback_failed(exc)
        except httptools.HttpParserError as exc:
            if self.parser.get_method() == b"PRI":
                # The HTTP/2 preface (llhttp pauses on it however the bytes were cut).
                self._protocol_error(local_reply(Cause.HTTP2_PREFACE))
            else:
                self._request_error(local_reply(Cause.BAD_REQUEST, f"malformed request: {exc}"))
        else:
            max_head = self.listener.settings.max_head_bytes
            if self._in_head and self._head_fed > max_head:
                self._protocol_error(local_reply(Cause.HEAD_TOO_LARGE))
            elif self._in_trailers and self._trailer_bytes + self._unparsed > max_head:
                # One chunk-size or trailer line that does not end, on top of the trailer lines so far.
                self._request_error(local_reply(Cause.HEAD_TOO_LARGE, "request trailers too large"))

    def _callback_failed(self, exc: httptools.HttpParserCallbackError) -> None:
        """One of our parser callbacks raised (its exception is the context): stop, or answer it."""
        reason = exc.__context__
        if isinstance(reason, _StopParsing):
            self._stop_parsing()
        elif isinstance(reason, BadRequest):
            if reason.cause is Cause.HTTP_VERSION:
                self._protocol_error(reason.reply())
            else:
                self._request_error(reason.reply())
        elif isinstance(reason, _HeadTooLarge):
            self._protocol_error(local_reply(Cause.HEAD_TOO_LARGE))
        elif isinstance(reason, _TrailersTooLarge):
            self._request_error(local_reply(Cause.HEAD_TOO_LARGE, "request trailers too large"))
        else:
            if reason is not None and not isinstance(reason, httptools.HttpParserError):
                log.error("request parsing failed", exc_info=reason)
            detail = str(reason) if isinstance(reason, httptools.HttpParserError) else str(exc)
            self._request_error(local_reply(Cause.BAD_REQUEST, f"malformed request: {detail}"))

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._tunnel is not None:
            # Half-close travels through the tunnel; the connection ends when the upstream side closes.
            self._tunnel.tunnel_eof()
            return self._keep_half_open
        active = self.active
        if (active is not None and not active.response_done) or self._queue:
            # TCP cannot tell a half-close from a close, and a client that closed must not hold an upstream
            # connection and a bulkhead slot until a timeout: like nginx (499) and Envoy, a FIN while
            # requests are pending means the client is gone. Its requests are cancelled at once, and the
            # connection is reset: what it would still receive is an answer cut short anyway, and a flush
            # to a client that stopped reading would hold the socket.
            self._client_gone("closed its connection")
            self.abort()
            return None
        # Nothing pending: close after flushing what was already written (close() resets the socket if the
        # flush does not finish within the stream idle timeout).
        self.close()
        return self._keep_half_open

    def _client_gone(self, how: str) -> None:
        """The client left: cancel the running handler (its upstream request with it), drop queued ones."""
        active = self.active
        if active is not None and not active.response_done:
            active.response_done = True
            if active.h1_body is not None and not active.h1_body.complete:
                active.h1_body.failed = True
            if self._task is not None:
                if active.handler_started:
                    log.info("client %s %s before the response to request %s ended: request cancelled",
                             self.peer.ip.decode("latin-1"), how, active.request_id.decode("latin-1"))
                self._cancel(active, CLIENT_GONE)
        self._queue.clear()
        self._pending = b""

    def pause_writing(self) -> None:
        self.write_paused = True
        active = self.active
        if active is not None and active.upstream_reader is not None:
            active.upstream_reader.pause_reading()
        if self._tunnel is not None:
            self._tunnel.pause_reading()
        else:
            self._paused_at = self._loop.time()
            if not self._body_in_progress():
                self._block(_BLOCK_WRITE)
            # Else the request being answered still sends its body: it is read on (the upstream's own write
            # buffer bounds it), and reading stops when it ends (on_message_complete). Stopping now could
            # deadlock a client that sends its whole body before it reads the answer.

    def _body_in_progress(self) -> bool:
        """The last request received is still sending its body."""
        last = self._queue[-1] if self._queue else self.active
        body = last.body if last is not None else None
        return body is not None and not body.complete and not self._in_head

    def resume_writing(self) -> None:
        self.write_paused = False
        active = self.active
        if active is not None and active.upstream_reader is not None:
            active.upstream_reader.resume_reading()
        if self._tunnel is not None:
            self._tunnel.resume_reading()
        else:
            self._unblock(_BLOCK_WRITE)
            if active is None and self._queue:
                self._next()  # pipelined requests held back while the client was not reading

    # -- reading control ---------------------------------------------------------------------------

    def _block(self, reason: int) -> None:
        # The socket is paused while any block holds or held-back bytes wait (see _parse_pending).
        if not self._blocks and not self._pending and self.transport is not None and not self._closing:
            self.transport.pause_reading()
        self._blocks |= reason

    def _unblock(self, reason: int) -> None:
        if self._blocks & reason:
            self._blocks &= ~reason
            if not self._blocks and self.transport is not None and not self._closing:
                if not self._pending:
                    self.transport.resume_reading()
                elif not self._pending_scheduled:
                    # Parse what was held back first, from the loop (not inside whatever unblocked us).
                    self._pending_scheduled = True
                    self._loop.call_soon(self._parse_pending)

    def _parse_pending(self) -> None:
        self._pending_scheduled = False
        if self._blocks or self._closing or not self._pending:
            return  # blocked again meanwhile: the next unblock schedules this again
        data, self._pending = self._pending, b""
        self._parse(data)
        if not self._blocks and not self._pending and self.transport is not None and not self._closing:
            self.transport.resume_reading()

    def pause_for_body(self) -> None:
        self._block(_BLOCK_BODY)

    def resume_for_body(self) -> None:
        self._unblock(_BLOCK_BODY)

    def pause_reading(self) -> None:
        """The upstream's write buffer is full: stop reading the client's body (ReadControl)."""
        self._block(_BLOCK_UPSTREAM)

    def resume_reading(self) -> None:
        self._unblock(_BLOCK_UPSTREAM)

    # -- parser callbacks (httptools) --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._resume_body:
            return
        self._in_head = True
        self._in_trailers = False
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._head_fed = 0
        self._header_count = 0
        self._trailer_bytes = 0
        self._trailer_count = 0
        self._trailers = None
        self._unparsed = 0
        now = self._loop.time()
        self._head_start = now
        deadline = now + self.listener.settings.header_read_timeout
        if self._timer is None or self._timer.when() > deadline:
            self._arm_at(deadline)

    def on_url(self, url: bytes) -> None:
        if self._resume_body:
            return
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.listener.settings.max_head_bytes:
            raise _HeadTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._resume_body:
            return
        if self._in_trailers:
            # Trailers are not forwarded over HTTP/1.1 (Trailer is hop-by-hop), but bounded like a head.
            self._trailer_bytes += len(name) + len(value) + 4
            self._trailer_count += 1
            self._unparsed = 0
            settings = self.listener.settings
            if self._trailer_bytes > settings.max_head_bytes or self._trailer_count > settings.max_headers:
                raise _TrailersTooLarge()
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name.lower(), value))
            return
        self._head_bytes += len(name) + len(value) + 4
        self._header_count += 1
        settings = self.listener.settings
        if self._head_bytes > settings.max_head_bytes or self._header_count > settings.max_headers:
            raise _HeadTooLarge()
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_trailers = True
        if self._resume_body:
            self._resume_body = False  # the synthetic head is done: what follows is the real body
            return
        parser = self.parser
        listener = self.listener
        # Raises BadRequest (answered by _callback_failed) for a head that cannot be accepted.
        accepted = accept_head(parser.get_method(), self._url, self._headers, parser.get_http_version(),
                               parser.should_keep_alive(), parser.should_upgrade(), listener.settings)
        head = accepted.head
        body: Http1RequestBody | None = None
        content_length = accepted.content_length
        if accepted.chunked or (content_length is not None and content_length > 0):
            body = Http1RequestBody(self, content_length, accepted.chunked)
        exchange = Exchange(self, head, body, self._head_start, accepted.keep_alive, accepted.http_minor)
        exchange.expect_continue = accepted.expect_continue
        exchange.websocket = accepted.websocket
        local = accepted.local
        if local is not None:
            # Answered in its turn (405 CONNECT, 413 by the declared length), then the connection closes.
            exchange.local = local
            self._enqueue(exchange)
            raise _StopParsing()
        self._enqueue(exchange)

    def on_body(self, data: bytes) -> None:
        self._unparsed = 0
        exchange = self._queue[-1] if self._queue else self.active
        if exchange is None or exchange.h1_body is None:
            return
        body = exchange.h1_body
        limit = self.listener.settings.max_request_body
        if limit and body.received + len(data) > limit:
            self._fail_body(exchange, local_reply(Cause.BODY_TOO_LARGE))
            raise _StopParsing()
        exchange.last_activity = self.now()
        body.feed(data)

    def on_message_complete(self) -> None:
        exchange = self._queue[-1] if self._queue else self.active
        if exchange is not None and exchange.h1_body is not None and not exchange.h1_body.complete:
            if self.parser.should_upgrade() and not exchange.websocket:
                # llhttp skips the body of any upgrade request; a dropped Upgrade (h2c) still has one,
                # read after the upgrade point (see _on_upgrade).
                return
            trailers = self._trailers
            exchange.h1_body.finish(trailer_fields(trailers) if trailers is not None else None)
        if self.write_paused and self._tunnel is None:
            self._block(_BLOCK_WRITE)  # a body read on while the client was behind has ended (pause_writing)

    # -- queueing and handing requests over ---------------------------------------------------------

    def _enqueue(self, exchange: Exchange) -> None:
        self._queue.append(exchange)
        if len(self._queue) > MAX_QUEUED:
            self._block(_BLOCK_QUEUE)
        if self.active is None:
            # While parsing: the handler is started by data_received once the read is fully parsed.
            self._next(start=False)

    def _next(self, start: bool = True) -> None:
        # Not while the client is behind on reading its answers: requests wait, parsed but not started.
        while self._queue and self.active is None and not self._closing and not self.write_paused:
            exchange = self._queue.popleft()
            if len(self._queue) <= MAX_QUEUED // 2:
                self._unblock(_BLOCK_QUEUE)
            self.active = exchange
            if exchange.local is not None:
                self.listener.refuse(exchange, exchange.local)
                continue
            if start:
                self._start_handler(exchange)

    def _start_handler(self, exchange: Exchange) -> None:
        now = self.now()
        exchange.last_activity = now
        idle = self.listener.settings.stream_idle_timeout
        if idle:
            # The connection's one timer must fire by this stream's idle deadline; with the defaults it
            # already does (the head timer is earlier), so this is a comparison, not a re-arm, per request.
            deadline = now + idle
            timer = self._timer
            if timer is None or timer.when() > deadline:
                self._arm_at(deadline)
        self._task = exchange.task = self._loop.create_task(self._run(exchange))

    async def _run(self, exchange: Exchange) -> None:
        exchange.handler_started = True
        try:
            await self.listener.handle(exchange)
        except asyncio.CancelledError:
            # A listener whose handler does not answer its own cancellations (the request path does): the
            # same one function answers (the reason's reply, or a reset).
            exchange.answer_cancelled()
        except Exception:
            # A bug must never show a client a traceback: log it, and answer or reset.
            log.exception("request handler failed (request id %s)", exchange.request_id.decode("latin-1"))
            if not exchange.response_started:
                exchange.send_local(local_reply(Cause.INTERNAL))
            elif not exchange.response_done:
                exchange.abort()

    def exchange_done(self, exchange: Exchange) -> None:
        """The response to `exchange` is fully written: close, or move on to the next request."""
        if exchange is not self.active:
            return
        self.active = None
        self._task = None
        exchange.upstream_reader = None
        self._traffic.add(self.rx, self.tx)
        self.rx = self.tx = 0
        # The upstream may have paused this socket for the body (its write buffer was full when the
        # exchange ended): the next request must be read.
        self._unblock(_BLOCK_UPSTREAM)
        body = exchange.h1_body
        if body is not None and not body.complete:
            # The answer went out before the client finished its body: the stream position is lost.
            exchange.close_after = True
        if exchange.close_after or self.draining:
            self.close()
            return
        if self._queue:
            self._next()
        else:
            self.idle_since = self.now()

    # -- writing -----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self._closing:
            self.tx += len(data)
            transport.write(data)

    def close(self) -> None:
        """Close after flushing what was written."""
        transport = self.transport
        if not self._closing and transport is not None:
            self._closing = True
            transport.close()
            if transport.get_write_buffer_size():
                # A flush that a client never reads would hold the socket forever: reset it when the
                # buffer is still not out after the stream idle timeout.
                settings = self.listener.settings
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self._loop.call_later(settings.stream_idle_timeout or settings.idle_timeout,
                                                    self.abort)

    def abort(self) -> None:
        """Drop the connection at once (the client sees an incomplete response)."""
        if self.transport is not None:
            self._closing = True
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self.active is None and not self._queue and not self._in_head

    def drain(self) -> None:
        """Stop keeping the connection alive: close it now if idle, else after the current response."""
        self.draining = True
        if self.idle:
            self.close()

    # -- errors, upgrades, tunnels ----------------------------------------------------------------

    def _stop_parsing(self) -> None:
        self._stopped = True
        self._block(_BLOCK_STOPPED)

    def _request_error(self, reply: LocalReply) -> None:
        """A parse error: in the body of the last request whose head was accepted, or in a new head."""
        last = self._queue[-1] if self._queue else self.active
        body = last.h1_body if last is not None else None
        if last is not None and body is not None and not self._in_head and not body.complete:
            self._fail_body(last, reply)
        else:
            self._protocol_error(reply)

    def _fail_body(self, exchange: Exchange, reply: LocalReply) -> None:
        """The body of an accepted request is malformed or too large: answer `reply`, never forward the rest.

        The stream position is lost, so parsing stops and the connection closes after the answer. A handler
        already running has sent the head upstream and maybe part of the body: it is cancelled, and the
        attempt aborts its upstream connection (never pooled) so the upstream never sees a whole request.
        """
        self._stop_parsing()
        if exchange.h1_body is not None:
            exchange.h1_body.failed = True
        exchange.close_after = True
        if exchange is not self.active:
            exchange.local = reply
            return  # queued behind another: answered in its turn, never handed over
        if self._task is None:
            self.listener.refuse(exchange, reply)  # same read as its head: the handler never started
        else:
            self._cancel(exchange, BODY_ERROR, reply)

    def _protocol_error(self, reply: LocalReply) -> None:
        """Answer a request that could not be parsed (in its turn), then close; nothing reaches upstream."""
        self._stop_parsing()
        self._in_head = False
        head = RequestHead(method=b"", path="", query=b"", authority="", host_header=b"", headers=[])
        exchange = Exchange(self, head, None, self._loop.time(), False)
        exchange.local = reply
        exchange.close_after = True
        self._enqueue(exchange)

    def _on_upgrade(self, rest: bytes) -> None:
        last = self._queue[-1] if self._queue else self.active
        if last is not None and last.local is not None:
            self._stop_parsing()  # CONNECT: answered 405, then closed
        elif last is not None and last.websocket:
            # Everything after the handshake belongs to the tunnel, once the upstream agrees (101); until
            # then the socket is not read, so a client cannot make us buffer without bound.
            self._stop_parsing()
            self._early = rest
        else:
            # Any other Upgrade (h2c, ...) is dropped as hop-by-hop: keep parsing HTTP/1.1.
            body = last.h1_body if last is not None else None
            if body is not None and not body.complete:
                # llhttp skipped this request's body (it expected another protocol to follow). Read it
                # with a fresh parser primed by a head that declares the same framing; its callbacks
                # feed the queued exchange, and pipelined requests after it parse as usual.
                self.parser = httptools.HttpRequestParser(self)
                self._resume_body = True
                framing = b"transfer-encoding: chunked" if body.chunked else b"content-length: %d" % (
                    body.length or 0)
                self.parser.feed_data(b"POST / HTTP/1.1\r\nhost: -\r\n" + framing + b"\r\n\r\n")
            if rest:
                self._receive(rest)

    def start_tunnel(self, peer: TunnelPeer) -> None:
        self._tunnel = peer
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        early, self._early = self._early, b""
        if early:
            peer.tunnel_write(early)
        if self._eof:
            peer.tunnel_eof()  # the client half-closed before the upstream's 101 arrived
            return
        self._blocks = 0
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    # -- timers ------------------------------------------------------------------------------------

    def _arm_at(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        # One timer per connection, re-armed lazily: requests do not pay a cancel + schedule each. It checks
        # whichever deadlines apply now (head read, stream idle, keep-alive idle) and re-arms for the
        # earliest; activity only moves a deadline later, so a timer that fires early just re-arms.
        self._timer = None
        if self._closing or self._tunnel is not None:
            return
        now = self._loop.time()
        settings = self.listener.settings
        # Look again at least this often: state changes (a request ending, a new one starting) do not re-arm.
        deadline = now + min(settings.idle_timeout, settings.header_read_timeout)
        active = self.active
        if self._in_head:
            # From the request's first byte (on_message_begin), not from the end of the previous request.
            head_deadline = self._head_start + settings.header_read_timeout
            if now >= head_deadline:
                if active is None and not self._queue:
                    self._protocol_error(local_reply(Cause.HEAD_TIMEOUT))
                else:
                    self.abort()
                return
            deadline = min(deadline, head_deadline)
        if active is not None:
            if settings.stream_idle_timeout and self._task is not None and active.cancel_reason is None:
                stream_deadline = active.last_activity + settings.stream_idle_timeout
                if now >= stream_deadline:
                    self._stream_idle(active)
                else:
                    # Capped by the fallback: an exchange that ends soon leaves an idle connection whose
                    # keep-alive deadline must not wait for a long stream deadline.
                    deadline = min(deadline, stream_deadline)
        elif self.write_paused:
            # Answers are written but the client does not read them (requests may wait behind them): no
            # byte has moved since the buffer filled, so it gets the stream idle timeout, then a reset
            # (a close would wait for a flush that never comes).
            stall_deadline = self._paused_at + (settings.stream_idle_timeout or settings.idle_timeout)
            if now >= stall_deadline:
                self.abort()
                return
            deadline = min(deadline, stall_deadline)
        elif not self._queue and not self._in_head:
            deadline = self.idle_since + settings.idle_timeout
            if now >= deadline:
                self.close()
                return
        self._arm_at(deadline)

    def _stream_idle(self, exchange: Exchange) -> None:
        """No byte moved for stream_idle_timeout: the handler answers 504, or resets a started response."""
        self._cancel(exchange, STREAM_IDLE, local_reply(Cause.TIMEOUT, "stream idle timeout"))

    def _cancel(self, exchange: Exchange, reason: CancelReason, reply: LocalReply | None = None) -> None:
        """Stop the active request's handler for `reason` (`RequestStream.cancel`).

        A handler that has run answers as it unwinds. One whose first step is still pending (its head and
        the fault arrived in consecutive reads, one loop turn apart) never gets to run: a Task cancelled
        before its first step throws into a coroutine that has not begun, so none of it executes. It is
        dropped, nothing of it reached the upstream, and the listener answers it as a refused request.
        """
        exchange.cancel(reason, reply)
        if self._task is None or exchange.handler_started:
            return
        self._task = exchange.task = None
        self.listener.refuse(exchange, None)


def create_protocol_factory(listener: Listener) -> Callable[[], ServerConnection]:
    """The factory `loop.create_server` calls for each accepted socket."""
    loop = asyncio.get_running_loop()

    def factory() -> ServerConnection:
        return ServerConnection(listener, loop)

    return factory

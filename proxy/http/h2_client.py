"""The upstream side of HTTP/2: one `H2ClientConnection` (an asyncio.Protocol) per upstream socket, carrying
many `H2UpstreamStream`s, one per attempt.

Owns the HTTP/2 codec towards upstreams, on our HTTP/2 engine (`proxy.http.h2_engine`; prior knowledge, or
`h2` chosen by ALPN): the connection preface and SETTINGS, how many streams the peer lets us open (`can_open`: below its
`max_concurrent_streams`, and no GOAWAY yet), request heads as HEADERS (`:method`, `:scheme`, `:authority`,
`:path`; hop-by-hop fields dropped, `te: trailers` kept), request bodies as DATA within the peer's windows (a
full stream pauses the client's reading), request trailers, response heads as `ResponseReady`, response bodies
spliced into the downstream stream with backpressure (a window is given back only for bytes the downstream has
taken), response trailers, RST_STREAM both ways, and GOAWAY from the upstream: the connection takes no new
streams, and streams above its last stream id fail as resets the upstream never processed (retriable).

The pool keeps these connections (`proxy.upstream.pool`, through the `MuxConnection` protocol it declares) and
asks each for streams. Must not know routes, clusters or policy. Compiled with mypyc (`H2UpstreamStream`
implements the native `UpstreamStream` trait), as the engine is.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

from proxy.errors import FailureKind, UpstreamError
from proxy.http.client import ResponseSink
from proxy.http.h2_engine import CANCEL, REFUSED_STREAM, H2Engine, H2Error, error_name
from proxy.http.h2_flow import next_piece
from proxy.http.headers import X_REQUEST_ID, connection_tokens
from proxy.message import HOP_BY_HOP, Headers, RequestHead, ResponseHead, reason_phrase
from proxy.stream import NO_BODY, ReadControl, ResponseReady, TunnelEnd, UpstreamStream

# Our receive window per stream, and for the connection this many streams' worth.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW_STREAMS = 16
# Request body bytes held per stream beyond the peer's window before the client's reading is paused.
STREAM_HIGH_WATER = 64 * 1024
# A connection carrying streams that has heard nothing for this long is asked for a sign of life (a PING).
KEEPALIVE_IDLE = 30.0
_PING_PAYLOAD = b"liveness"

# Request fields that do not exist in HTTP/2 (`te` is kept only as `te: trailers`).
_DROPPED_OUT = HOP_BY_HOP | {b"host", b"content-length", b"http2-settings"}
# Response fields not relayed: the downstream frames the body anew, and writes its own x-request-id.
_DROPPED_IN = HOP_BY_HOP | {b"content-length", X_REQUEST_ID}


class H2UpstreamStream(UpstreamStream):
    """One attempt's HTTP/2 stream on an `H2ClientConnection`."""

    __slots__ = ("_body", "_body_flow", "_complete", "_done_waiter", "_end_pending", "_error", "_head_request",
                 "_head_waiter", "_out", "_out_size", "_sent_end", "_trailers", "_trailers_out", "body_reader",
                 "closed", "conn", "context", "downstream", "on_idle", "on_lost", "read_paused", "requests_sent",
                 "rx", "stream_id", "tx", "unacked")

    def __init__(self, conn: H2ClientConnection) -> None:
        self.conn = conn
        self.context = conn.context
        self.closed = False
        self.requests_sent = 0
        self.rx = 0
        self.tx = 0
        self.on_idle: Callable[[Any], None] | None = None
        self.on_lost: Callable[[Any], None] | None = None
        self.stream_id = 0
        self.downstream: ResponseSink | None = None
        self.body_reader: ReadControl | None = None
        self.read_paused = False
        self.unacked = 0
        self._head_waiter: asyncio.Future[ResponseReady] = conn.loop.create_future()
        self._done_waiter: asyncio.Future[None] | None = None
        self._error: UpstreamError | None = None
        self._complete = False
        self._head_request = False
        self._body: list[bytes] = []
        self._body_flow = 0
        self._trailers: Headers | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._end_pending = False
        self._sent_end = False
        self._trailers_out: Headers | None = None

    # -- sending -----------------------------------------------------------------------------------

    def send(self, head: RequestHead, extra: tuple[bytes, bytes], length: int | None, whole: bytes | None,
             trailers: Headers | None, upgrade: bool) -> None:
        self.requests_sent += 1
        self._head_request = head.method == b"HEAD"
        if upgrade:
            self.fail(UpstreamError(FailureKind.PROTOCOL, f"{self.context}: no WebSocket over an HTTP/2 upstream"))
            return
        conn = self.conn
        if not conn.can_send():
            self.fail(UpstreamError(FailureKind.RESET, f"{self.context}: HTTP/2 connection going away",
                                    stale=True))
            return
        fields = request_fields(head, extra, conn.scheme)
        if length is not None and length >= 0:
            fields.append((b"content-length", b"%d" % length))
        no_body = length == NO_BODY or (whole is not None and not whole and not trailers)
        self.stream_id = conn.start_stream(self, fields, no_body)
        if self.stream_id == 0:
            # The peer lowered its stream limit meanwhile, or h2 refused the head: nothing was sent.
            self.fail(UpstreamError(FailureKind.RESET, f"{self.context}: HTTP/2 stream not opened", stale=True))
            return
        if no_body:
            self._sent_end = True
        elif whole is not None:
            self.write_body(whole)
            self.end_body(trailers)

    def write_body(self, data: bytes) -> None:
        if not data or self.closed or self._end_pending:
            return
        self._out.append(data)
        self._out_size += len(data)
        self.send_pending()
        if self._out_size > STREAM_HIGH_WATER and self.body_reader is not None:
            self.body_reader.pause_reading()

    def end_body(self, trailers: Headers | None) -> None:
        if self.closed or self._end_pending or self._sent_end:
            return
        self._end_pending = True
        if trailers:
            self._trailers_out = [(n, v) for n, v in trailers if n not in _DROPPED_OUT and n[:1] != b":"]
        self.send_pending()

    def send_pending(self) -> None:
        """Send held request body bytes within the peer's windows; the end of the stream once they are out."""
        conn = self.conn
        if self.closed or self._sent_end or self.stream_id == 0:
            return
        out = self._out
        while out:
            window = conn.window(self.stream_id)
            if window <= 0:
                break
            piece = next_piece(out, window)
            self._out_size -= len(piece)
            conn.send_data(self.stream_id, piece)
        if self._out_size <= STREAM_HIGH_WATER // 2 and self.body_reader is not None:
            self.body_reader.resume_reading()
        if not out and self._end_pending:
            self._sent_end = True
            conn.end_stream(self.stream_id, self._trailers_out)

    def set_body_reader(self, reader: ReadControl | None) -> None:
        previous = self.body_reader
        self.body_reader = reader
        if previous is not None and previous is not reader and self._out_size > STREAM_HIGH_WATER:
            previous.resume_reading()

    async def response_head(self) -> ResponseReady:
        return await self._head_waiter

    # -- the response ------------------------------------------------------------------------------

    def on_head(self, fields: Headers, ended: bool) -> None:
        status = 0
        headers: Headers = []
        content_length: int | None = None
        for name, value in fields:
            if name == b":status":
                status = int(value)
            elif name == b"content-length":
                content_length = int(value)
            elif name[:1] != b":" and name not in _DROPPED_IN and not name.startswith(b"proxy-"):
                headers.append((name, value))
        if ended:
            self._complete = True
        no_body = ended or self._head_request or status in (204, 304)
        if not self._head_waiter.done():
            self._head_waiter.set_result(ResponseReady(ResponseHead(status, reason_phrase(status), headers),
                                                       0 if ended else content_length, no_body))

    def on_data(self, data: bytes, flow: int) -> None:
        downstream = self.downstream
        if downstream is None:
            self._body.append(data)
            self._body_flow += flow
            return
        downstream.write_body(data)
        self.consumed(flow)

    def consumed(self, flow: int) -> None:
        if self.read_paused:
            self.unacked += flow
        else:
            self.conn.acknowledge(self.stream_id, flow)

    def on_trailers(self, fields: Headers) -> None:
        self._trailers = [(n, v) for n, v in fields if n[:1] != b":"]

    def on_end(self) -> None:
        if self._complete:
            return
        self._complete = True
        waiter = self._done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        """The stream was reset (by the peer, a GOAWAY or the connection's loss) before it completed."""
        if self._complete or self._error is not None:
            return
        if self._head_waiter.done():
            error = UpstreamError(error.kind, error.context, response_started=True)
            if self.downstream is not None:
                self.downstream.abort()
            if self._done_waiter is not None and not self._done_waiter.done():
                self._done_waiter.set_exception(error)
        else:
            self._head_waiter.set_exception(error)
        self._error = error

    def take_body(self) -> bytes:
        body, self._body = self._body, []
        flow, self._body_flow = self._body_flow, 0
        if flow:
            self.consumed(flow)
        if not body:
            return b""
        return body[0] if len(body) == 1 else b"".join(body)

    def attach(self, downstream: ResponseSink) -> bool:
        self.downstream = downstream
        downstream.upstream_reader = self
        if downstream.write_paused:
            self.pause_reading()
        body, self._body = self._body, []
        flow, self._body_flow = self._body_flow, 0
        for piece in body:
            downstream.write_body(piece)
        if flow:
            self.consumed(flow)
        return self._complete

    @property
    def trailers(self) -> Headers | None:
        return self._trailers

    async def response_done(self) -> None:
        if self._error is not None:
            raise self._error
        if self._complete:
            return
        self._done_waiter = self.conn.loop.create_future()
        await self._done_waiter

    # ReadControl: the downstream is behind, stop giving the window back.
    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            flow, self.unacked = self.unacked, 0
            if flow:
                self.conn.acknowledge(self.stream_id, flow)

    # -- after the exchange ------------------------------------------------------------------------

    def finish(self, reusable: bool) -> None:
        self.downstream = None
        self.set_body_reader(None)
        if not self._complete or not self._sent_end:
            self.abort()
            return
        self._release()

    def detach(self) -> None:
        self.downstream = None
        self.set_body_reader(None)

    def abort(self) -> None:
        """Reset this stream (the connection goes on carrying the others)."""
        if not self.closed and self.stream_id and not (self._complete and self._sent_end):
            self.conn.reset(self.stream_id, CANCEL)
            if not self._complete:
                # Given up on before its answer (a timeout, usually): is the connection itself still alive?
                self.conn.check_alive()
        self._release()

    def close(self) -> None:
        self.abort()

    def _release(self) -> None:
        if self.closed:
            return
        self.closed = True
        flow = self.unacked + self._body_flow
        self.unacked = self._body_flow = 0
        self._body = []
        self.conn.stream_done(self, flow)
        if self.on_idle is not None:
            self.on_idle(self)

    # -- no tunnels over HTTP/2 upstreams -------------------------------------------------------------

    def start_tunnel(self, downstream: TunnelEnd) -> None:
        downstream.close()
        self.abort()

    def tunnel_write(self, data: bytes) -> None:
        pass

    def tunnel_eof(self) -> None:
        pass

    def tunnel_close(self) -> None:
        self.abort()


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 connection to an upstream endpoint, and its streams."""

    __slots__ = (
        "_flush_pending",
        "_h2",
        "_keepalive",
        "_last_rx",
        "_last_stream",
        "_probe",
        "_ready",
        "_reserved",
        "_streams",
        "closed",
        "context",
        "draining",
        "goaway",
        "loop",
        "max_head_bytes",
        "on_lost",
        "ping_timeout",
        "rx",
        "scheme",
        "streams_opened",
        "transport",
        "tx",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, context: str, max_head_bytes: int, max_headers: int,
                 tls: bool = False) -> None:
        self.loop = loop
        self.context = context
        self.max_head_bytes = max_head_bytes
        self.scheme = b"https" if tls else b"http"
        self.transport: asyncio.Transport | None = None
        self._h2 = H2Engine(self, True, 0, STREAM_WINDOW, STREAM_WINDOW * CONNECTION_WINDOW_STREAMS, max_head_bytes)
        self._streams: dict[int, H2UpstreamStream] = {}
        # Streams handed out and not yet done (those not yet sent have no id): what counts against the limit.
        self._reserved = 0
        self._flush_pending = False
        self._ready: asyncio.Future[None] = loop.create_future()
        self._last_stream = 0
        self.closed = False
        self.draining = False
        self.goaway = False
        self.on_lost: Callable[[Any], None] | None = None
        self.rx = 0
        self.tx = 0
        # Streams handed out over the connection's life (the pool's max_requests_per_connection counts them).
        self.streams_opened = 0
        # Liveness: when the peer last sent anything, the PING awaiting an answer, the idle check's timer. A
        # silent peer (a host gone without a FIN or RST) would otherwise keep taking every new stream.
        self.ping_timeout = 5.0  # the pool sets the cluster's connect_timeout
        self._last_rx = loop.time()
        self._probe: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None

    # -- what the pool asks ------------------------------------------------------------------------

    async def ready(self) -> None:
        """Wait for the peer's first SETTINGS (its stream limit); the caller bounds the wait."""
        await asyncio.shield(self._ready)

    def can_open(self) -> bool:
        limit = self._h2.remote_max_streams
        if self.closed or self.goaway or self.draining or self._reserved >= limit:
            return False
        if self._h2.stream_ids_left() <= self._reserved:
            self.drain()  # stream ids run out at 2^31: a fresh connection takes the next streams
            return False
        return True

    def open_stream(self) -> UpstreamStream:
        self._reserved += 1
        self.streams_opened += 1
        if self._keepalive is None:
            self._keepalive = self.loop.call_later(KEEPALIVE_IDLE, self._keepalive_check)
        return H2UpstreamStream(self)

    # -- liveness ------------------------------------------------------------------------------------

    def check_alive(self) -> None:
        """Send a PING (unless one is out): the peer must send something within ping_timeout, or the connection
        is closed and its streams fail as resets (the pool opens a fresh one for the next)."""
        if self._probe is not None or self.closed or self.transport is None:
            return
        self._h2.ping(_PING_PAYLOAD)
        self.flush()
        self._probe = self.loop.call_later(self.ping_timeout, self._probe_expired, self.loop.time())

    def _probe_expired(self, sent: float) -> None:
        self._probe = None
        if self.closed or self._last_rx >= sent:
            return
        silent = f"no answer to a PING in {self.ping_timeout:g}s"
        error = UpstreamError(FailureKind.RESET, f"{self.context}: HTTP/2 connection silent ({silent})")
        for stream in list(self._streams.values()):
            stream.fail(error)
        self.abort()

    def _keepalive_check(self) -> None:
        """While streams are open: nothing heard for KEEPALIVE_IDLE asks for a sign of life."""
        self._keepalive = None
        if self.closed or self._reserved == 0:
            return
        idle = self.loop.time() - self._last_rx
        if idle >= KEEPALIVE_IDLE:
            self.check_alive()
            idle = 0.0
        self._keepalive = self.loop.call_later(KEEPALIVE_IDLE - idle, self._keepalive_check)

    @property
    def active_streams(self) -> int:
        return self._reserved

    def drain(self) -> None:
        """No new streams; close once the ones under way are done."""
        self.draining = True
        if self._reserved == 0:
            self.close()

    # -- what streams call -------------------------------------------------------------------------

    def can_send(self) -> bool:
        return not (self.closed or self.goaway)

    def start_stream(self, stream: H2UpstreamStream, fields: Headers, end: bool) -> int:
        """Send a request head on a new stream; its id, or 0 when the connection is closed."""
        stream_id = self._h2.next_stream_id()
        if not self._h2.send_headers(stream_id, fields, end):
            return 0
        self._streams[stream_id] = stream
        self._last_stream = stream_id
        self.flush()
        return stream_id

    def window(self, stream_id: int) -> int:
        return self._h2.window(stream_id)

    def send_data(self, stream_id: int, data: bytes) -> None:
        if not self.closed and self._h2.send_data(stream_id, data, False):
            self.flush()

    def end_stream(self, stream_id: int, trailers: Headers | None) -> None:
        if self.closed:
            return
        if trailers:
            self._h2.send_headers(stream_id, trailers, True)
        else:
            self._h2.end_stream(stream_id)
        self.flush()

    def acknowledge(self, stream_id: int, flow: int) -> None:
        if flow and not self.closed:
            self._h2.acknowledge(stream_id, flow)
            self.flush()

    def reset(self, stream_id: int, code: int) -> None:
        if not self.closed and self._h2.reset_stream(stream_id, code):
            self.flush()

    def stream_done(self, stream: H2UpstreamStream, flow: int) -> None:
        self._reserved -= 1
        if stream.stream_id:
            self._streams.pop(stream.stream_id, None)
            if flow and not self.closed:
                # The connection window its unread bytes held (the stream is closed or reset).
                self._h2.acknowledge(stream.stream_id, flow)
                self.flush()
        if self._reserved == 0 and (self.draining or self.goaway):
            self.close()

    def flush(self) -> None:
        """Write what the engine has queued once per loop iteration (the frames of many streams in one write)."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_pending = False
        data = self._h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            self.tx += len(data)
            transport.write(data)

    # -- transport events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._h2.initiate()
        self.flush_now()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in (self._probe, self._keepalive):
            if timer is not None:
                timer.cancel()
        self._probe = self._keepalive = None
        if not self._ready.done():
            self._ready.set_exception(UpstreamError(FailureKind.CONNECT_REFUSED,
                                                    f"{self.context}: closed before its HTTP/2 SETTINGS"))
            self._ready.exception()  # retrieved: nobody may be waiting
        if self.on_lost is not None:
            self.on_lost(self)
        error = UpstreamError(FailureKind.RESET, f"{self.context}: HTTP/2 connection closed")
        for stream in list(self._streams.values()):
            stream.fail(error)

    def data_received(self, data: bytes) -> None:
        self.rx += len(data)
        self._last_rx = self.loop.time()
        if self.closed:
            return
        try:
            self._h2.receive(data)
        except H2Error as exc:
            self._protocol_error(str(exc))
            return
        self.flush()  # with the rest of this loop iteration's frames, in one write

    # -- what the upstream sent (H2Events) ---------------------------------------------------------------

    def h2_data(self, stream_id: int, data: bytes, flow: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.closed:
            self.acknowledge(stream_id, flow)
        else:
            stream.on_data(data, flow)

    def h2_trailers(self, stream_id: int, fields: Headers) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.on_trailers(fields)

    def h2_end(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.on_end()

    def h2_ping(self) -> None:
        pass

    def h2_settings(self) -> None:
        if not self._ready.done():
            self._ready.set_result(None)

    def h2_headers(self, stream_id: int, fields: Headers, end: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        size = sum(len(n) + len(v) + 32 for n, v in fields)
        if size > self.max_head_bytes:
            stream.fail(UpstreamError(FailureKind.HEADERS_TOO_LARGE,
                                      f"{self.context}: response head over max_response_headers"))
            stream.abort()
            return
        stream.on_head(fields, end)

    def h2_window(self, stream_id: int) -> None:
        if stream_id:
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream.send_pending()
            return
        for stream in list(self._streams.values()):
            stream.send_pending()

    def h2_reset(self, stream_id: int, code: int, remote: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        # REFUSED_STREAM: the upstream did not process it (RFC 9113 section 8.7), so it may be sent again.
        refused = code == REFUSED_STREAM
        who = "the upstream" if remote else "us (a malformed response)"
        stream.fail(UpstreamError(FailureKind.RESET,
                                  f"{self.context}: stream reset by {who} ({error_name(code)})", stale=refused))

    def h2_goaway(self, last_stream_id: int, code: int) -> None:
        """The upstream's GOAWAY: no new streams here; those above `last_stream_id` were never processed
        (retriable resets); those at or below it still get their answers."""
        self.goaway = True
        error = UpstreamError(FailureKind.RESET,
                              f"{self.context}: HTTP/2 GOAWAY ({error_name(code)}): stream not processed",
                              stale=True)
        for stream_id, stream in list(self._streams.items()):
            if stream_id > last_stream_id:
                stream.fail(error)
        if self._reserved == 0:
            self.close()

    def _protocol_error(self, detail: str) -> None:
        self.flush_now()
        error = UpstreamError(FailureKind.PROTOCOL, f"{self.context}: HTTP/2 protocol error: {detail}")
        for stream in list(self._streams.values()):
            stream.fail(error)
        self.abort()

    def close(self) -> None:
        transport = self.transport
        if not self.closed and transport is not None:
            self.flush_now()
            self.closed = True
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


def request_fields(head: RequestHead, extra: tuple[bytes, bytes], scheme: bytes) -> Headers:
    """A request head as HTTP/2 fields: the pseudo-header fields, then its headers without the HTTP/1-only
    ones (hop-by-hop, those `Connection` names, Host: it is `:authority`), `te: trailers` kept."""
    fields: Headers = [(b":method", head.method), (b":scheme", scheme), (b":authority", head.host_header),
                       (b":path", head.target())]
    named: frozenset[bytes] = frozenset()
    for name, _ in head.headers:
        if name == b"connection":
            named = connection_tokens(head.headers)
            break
    for name, value in head.headers:
        if name == b"te":
            if b"trailers" in value.lower():
                fields.append((b"te", b"trailers"))
        elif name not in _DROPPED_OUT and name not in named and not name.startswith(b"proxy-"):
            fields.append((name, value))
    fields.append(extra)
    return fields

"""The downstream side of HTTP/2: one `Http2Connection` (an asyncio.Protocol) per connection that spoke HTTP/2.

Owns the HTTP/2 codec towards clients, on our HTTP/2 engine (`proxy.http.h2_engine`): the connection
(settings, PING answers, GOAWAY on drain with the last stream id, so in-flight streams finish), its streams
(`H2Stream`, one `RequestStream` each, handed to the listener's `handle` like an HTTP/1 exchange), request
bodies with flow control (`H2RequestBody`: a window is given back only for bytes the upstream has taken, so a
slow upstream holds the client's window, not our memory), responses sent within the client's windows (a slow
reader pauses the upstream), trailers both ways, RST_STREAM both ways (a client reset cancels the request:
499), and the protections, each answered with RST_STREAM or GOAWAY and counted by the listener
(`sidecar_http2_protections_total{listener,reason}`): rapid reset, CONTINUATION flood, SETTINGS and PING
floods, streams beyond `max_concurrent_streams` (REFUSED_STREAM, never queued), oversize header lists.

A connection gets here from the HTTP/1 codec (`proxy.http.server`), which recognises the client preface on a
connection's first bytes (prior-knowledge h2c, or `h2` chosen by ALPN under TLS) and hands the transport
over. Every request head goes through `accept_head`, as HTTP/1 heads do, so routing sees the same
`RequestHead` whichever protocol carried it. Must not know routes, clusters or policy, or make request ids.

Compiled with mypyc (H2Stream subclasses the native `RequestStream`), as the engine is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Protocol, cast

from proxy.http.h2_engine import (
    ENHANCE_YOUR_CALM,
    HEADER_LIST_SIZE,
    INTERNAL_ERROR,
    NO_ERROR,
    REFUSED_STREAM,
    STREAM_LIMIT,
    H2Engine,
    H2Error,
)
from proxy.http.h2_flow import next_piece
from proxy.http.request_head import BadRequest, accept_head
from proxy.http.settings import Http2Settings, ServerSettings
from proxy.local_reply import Cause, LocalReply, local_reply
from proxy.message import HOP_BY_HOP, Headers, RequestHead, ResponseHead, first_header, is_grpc
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
)

log = logging.getLogger("proxy.http.h2_server")

# Response body bytes held per stream (beyond what the client's window lets out) before its upstream pauses.
STREAM_HIGH_WATER = 64 * 1024
# PING and SETTINGS frames a client may send per second before the connection is closed (a flood makes us
# write an answer for each).
MAX_PINGS_PER_SECOND = 100
MAX_SETTINGS_PER_SECOND = 100
# The connection-level receive window: this many streams' initial windows (the memory a connection's request
# bodies can hold before they are taken).
CONNECTION_WINDOW_STREAMS = 16

# Response headers that do not exist in HTTP/2 (connection-specific): an HTTP/1.1 upstream's are dropped.
_DROPPED_OUT = HOP_BY_HOP | {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                             # framing is ours: `start_response` writes the one content-length (a local reply's
                             # head carries its own; two would be a PROTOCOL_ERROR to curl and nghttp2)
                             b"content-length"}

RAPID_RESET = "rapid_reset"
SETTINGS_FLOOD = "settings_flood"
PING_FLOOD = "ping_flood"


class H2Listener(Protocol):
    """What an HTTP/2 connection needs from its listener (the request path implements it)."""

    settings: ServerSettings
    # Where connections report their bytes (`sidecar_downstream_bytes_total`).
    traffic: ByteCounter

    def handle(self, stream: RequestStream) -> Awaitable[None]: ...
    def refuse(self, stream: RequestStream, reply: LocalReply | None) -> None: ...
    def connection_opened(self, conn: Http2Connection) -> None: ...
    def connection_closed(self, conn: Http2Connection) -> None: ...
    def http2_protection(self, reason: str) -> None: ...


class H2RequestBody(RequestBody):
    """A request body arriving in DATA frames. Bytes before a sink is attached are kept, unacknowledged: the
    stream's window bounds them. Once attached, each piece is acknowledged (its window given back) when the
    sink has taken it, unless the upstream has paused the stream (its write buffer is full)."""

    __slots__ = ("_buffered", "_buffered_flow", "_sink", "_stream", "kept", "replay_limit", "replayable")

    def __init__(self, stream: H2Stream, length: int | None) -> None:
        super().__init__(length)
        self._stream = stream
        self._sink: BodySink | None = None
        self._buffered: list[bytes] = []
        self._buffered_flow = 0
        self.replay_limit = 0
        self.kept: list[bytes] | None = None
        self.replayable = True

    def keep_for_replay(self, limit: int) -> None:
        self.replay_limit = limit
        if self.kept is None:
            buffered = sum(map(len, self._buffered))
            if self.received > limit or self.received != buffered:
                self.kept = []
                self.replayable = False
            else:
                self.kept = list(self._buffered)

    def feed(self, data: bytes, flow: int) -> None:
        """`data` arrived; `flow` is what it counted against the windows (padding included)."""
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
            self._stream.consumed(flow)
            return
        self._buffered.append(data)
        self._buffered_flow += flow

    def finish(self, trailers: Headers | None) -> None:
        self.complete = True
        self.trailers = trailers
        if self._sink is not None:
            self._sink.end_body(trailers)

    def _hand_buffered(self, sink: BodySink, send: bool) -> None:
        chunks, self._buffered = self._buffered, []
        flow, self._buffered_flow = self._buffered_flow, 0
        if send:
            for piece in chunks:
                sink.write_body(piece)
        if flow:
            self._stream.consumed(flow)

    def attach(self, sink: BodySink) -> None:
        self._sink = sink
        if self._buffered or self._buffered_flow:
            self._hand_buffered(sink, True)
        if self.complete:
            sink.end_body(self.trailers)

    def reattach(self, sink: BodySink) -> bool:
        if self.kept is None or not self.replayable:
            return False
        self._sink = sink
        for piece in self.kept:
            sink.write_body(piece)
        # Bytes buffered while detached are in `kept` already: only their windows are given back.
        self._hand_buffered(sink, False)
        if self.complete:
            sink.end_body(self.trailers)
        return True

    def detach(self) -> None:
        self._sink = None

    def can_replay(self) -> bool:
        kept = self.kept
        if kept is None or not self.replayable:
            return False
        return sum(map(len, kept)) == self.received

    def take_complete(self) -> bytes | None:
        if not self.complete or self._sink is not None:
            return None
        chunks = self._buffered
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._buffered = []
        flow, self._buffered_flow = self._buffered_flow, 0
        if flow:
            self._stream.consumed(flow)
        return data

    def unacknowledged(self) -> int:
        """The window held by buffered bytes (given back to the connection when the stream ends)."""
        flow, self._buffered_flow = self._buffered_flow, 0
        self._buffered = []
        return flow


class H2Stream(RequestStream):
    """One HTTP/2 stream: a request and the response written back for it. It is also the `ReadControl` an
    upstream pauses when its write buffer fills with this request's body (acknowledgements stop)."""

    __slots__ = ("_end_pending", "_ended", "_out", "_out_size", "_trailers_out", "_unsent", "conn", "h2_body",
                 "handler_started", "head_only", "last_activity", "read_paused", "stream_id", "trailers_wanted",
                 "unacked")

    def __init__(self, conn: Http2Connection, stream_id: int, head: RequestHead, started_at: float) -> None:
        super().__init__(head, None, conn.peer_ip, started_at, conn.peer_identity, conn.client_cert)
        self.conn = conn
        self.stream_id = stream_id
        self.h2_body: H2RequestBody | None = None
        self.head_only = False
        self.last_activity = started_at
        self.handler_started = False
        self.read_paused = False
        self.unacked = 0
        self._out: list[bytes] = []
        self._out_size = 0
        self._end_pending = False
        # END_STREAM is already sent (with the head or the last DATA of a response of declared length).
        self._ended = False
        # Response body bytes of the declared length not sent yet (-1: length unknown).
        self._unsent = -1
        # The client takes trailers (gRPC, or `te: trailers`): an HTTP/2 upstream may send them after a body of
        # declared length, so END_STREAM waits for the end of the response, not the body's last byte.
        self.trailers_wanted = False
        self._trailers_out: Headers | None = None

    # -- request body flow control (ReadControl) ---------------------------------------------------

    def consumed(self, flow: int) -> None:
        """The body's consumer took `flow` bytes: give the window back, unless the upstream paused us."""
        if self.read_paused:
            self.unacked += flow
        else:
            self.conn.acknowledge(self.stream_id, flow)

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            flow, self.unacked = self.unacked, 0
            if flow:
                self.conn.acknowledge(self.stream_id, flow)

    def release_window(self) -> int:
        """The stream ended: the connection window its unconsumed body bytes held."""
        flow, self.unacked = self.unacked, 0
        body = self.h2_body
        if body is not None:
            flow += body.unacknowledged()
        return flow

    @property
    def write_paused(self) -> bool:
        return self._out_size > STREAM_HIGH_WATER or self.conn.write_paused

    @property
    def reader(self) -> ReadControl:
        return self

    # -- answering -----------------------------------------------------------------------------------

    def send_local(self, reply: LocalReply) -> None:
        if self.response_started:
            self.abort()
            return
        body = b"" if self.head_only else reply.body
        self.start_response(reply.head, len(reply.body), False, body)
        self.end_response(None)

    def send_continue(self) -> None:
        if self.expect_continue and not self.response_started:
            self.expect_continue = False
            self.conn.send_headers(self.stream_id, [(b":status", b"100")], False)

    def start_response(self, head: ResponseHead, content_length: int | None, no_body: bool,
                       first: bytes = b"") -> None:
        status = head.status
        if self.response_done:
            return  # reset by the client meanwhile
        self.response_started = True
        self.response_status = status
        self.last_activity = self.conn.now()
        fields: Headers = [(b":status", b"%d" % status)]
        for name, value in head.headers:
            if name not in _DROPPED_OUT:
                fields.append((name, value))
        if content_length is not None and status != 204 and status != 304 and status >= 200:
            fields.append((b"content-length", b"%d" % content_length))
        fields.append((b"x-request-id", self.request_id))
        bodiless = no_body or self.head_only or status == 204 or status == 304 or content_length == 0
        # A response known to have no body, or whose declared body ends with its last DATA frame, carries
        # END_STREAM there: no empty DATA frame to end it (a third of the frames of a small response).
        self._ended = bodiless and status >= 200
        self._unsent = (content_length if content_length is not None and status >= 200 and not self.trailers_wanted
                        else -1)
        self.conn.send_headers(self.stream_id, fields, self._ended)
        if first and not bodiless:
            self.write_body(first)

    def write_body(self, data: bytes) -> None:
        if not data or self.response_done or self._ended:
            return
        self.last_activity = self.conn.now()
        self.bytes_out += len(data)
        self._out.append(data)
        self._out_size += len(data)
        self.send_pending()
        if self._out_size > STREAM_HIGH_WATER and self.upstream_reader is not None:
            self.upstream_reader.pause_reading()

    def end_response(self, trailers: Headers | None = None) -> None:
        if self.response_done:
            return
        self._end_pending = True
        if trailers:
            self._trailers_out = [(n, v) for n, v in trailers if n not in _DROPPED_OUT and n[:1] != b":"]
        self.send_pending()

    def send_pending(self) -> None:
        """Send held response bytes within the client's windows; the end of the stream once they are out."""
        conn = self.conn
        if conn.write_paused or self.response_done:
            return
        out = self._out
        while out:
            window = conn.window(self.stream_id)
            if window <= 0:
                break
            piece = next_piece(out, window)
            self._out_size -= len(piece)
            last = False
            if self._unsent >= 0:
                self._unsent -= len(piece)
                last = self._unsent <= 0 and not out
            conn.send_data(self.stream_id, piece, last)
            self._ended = last
        if self._out_size <= STREAM_HIGH_WATER // 2 and self.upstream_reader is not None:
            self.upstream_reader.resume_reading()
        if not out and self._end_pending:
            if not self._ended:
                conn.end_stream(self.stream_id, self._trailers_out)
            self._finish()

    def _finish(self) -> None:
        if not self.response_done:
            self.response_done = True
            self.conn.stream_done(self)

    def abort(self) -> None:
        """Reset the stream (RST_STREAM): the response cannot be completed."""
        self.aborted = True
        if not self.response_done:
            self.response_done = True
            self.conn.reset(self.stream_id, INTERNAL_ERROR)
            self.conn.stream_done(self)

    def client_reset(self) -> None:
        """The client reset the stream: nothing more is sent on it."""
        self.response_done = True
        self._out = []
        self._out_size = 0


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 client connection: its engine, streams, timer and protections (the engine's `H2Events`)."""

    __slots__ = (
        "_closing",
        "_counts_since",
        "_flush_pending",
        "_h2",
        "_last_stream",
        "_loop",
        "_malformed_seen",
        "_pings",
        "_resets",
        "_settings_seen",
        "_streams",
        "_timer",
        "_traffic",
        "client_cert",
        "draining",
        "idle_since",
        "listener",
        "now",
        "peer_identity",
        "peer_ip",
        "rx",
        "transport",
        "tx",
        "write_paused",
    )

    def __init__(self, listener: H2Listener, loop: asyncio.AbstractEventLoop, peer_ip: bytes, peer_identity: str,
                 client_cert: bytes) -> None:
        self.listener = listener
        # Bytes read and written since the last report: added to the listener's counters when a stream ends
        # and when the connection closes (not per frame).
        self.rx = 0
        self.tx = 0
        self._traffic = listener.traffic
        self._loop = loop
        self.now = loop.time
        self.peer_ip = peer_ip
        self.peer_identity = peer_identity
        self.client_cert = client_cert
        self.transport: asyncio.Transport | None = None
        config = self._http2
        self._h2 = H2Engine(self, False, config.max_concurrent_streams, config.initial_stream_window,
                            config.initial_stream_window * CONNECTION_WINDOW_STREAMS,
                            listener.settings.max_head_bytes)
        self._streams: dict[int, H2Stream] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._flush_pending = False
        self.draining = False
        self.write_paused = False
        # The highest stream id handed to the listener (the GOAWAY of a drain names it).
        self._last_stream = 0
        # Flood accounting: frames of each kind since `_counts_since` (a one-second window).
        self._counts_since = loop.time()
        self._resets = 0
        self._malformed_seen = 0
        self._pings = 0
        self._settings_seen = 0
        self.idle_since = loop.time()

    @property
    def _http2(self) -> Http2Settings:
        config = self.listener.settings.http2
        return config if config is not None else _DEFAULT_HTTP2

    # -- transport events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        settings = self.listener.settings
        # Streams over the advertised limit (a client may open them before it has read our SETTINGS) are
        # refused one by one (REFUSED_STREAM, see h2_headers), not by failing the whole connection.
        self._h2.initiate()
        self.listener.connection_opened(self)
        self.flush_now()
        self._arm(self.now() + min(settings.idle_timeout, settings.header_read_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._report_traffic()
        self.listener.connection_closed(self)
        for stream in list(self._streams.values()):
            self._client_gone(stream)
        self._streams.clear()

    def eof_received(self) -> bool | None:
        # The client closed its side: whatever it has open is cancelled (as HTTP/1's FIN with requests pending).
        for stream in list(self._streams.values()):
            self._client_gone(stream)
        self.abort()
        return None

    def pause_writing(self) -> None:
        # The client is not reading: stop reading it too (what it sends can make us write: RST_STREAMs,
        # PING and SETTINGS acknowledgements), and stop the upstreams feeding its streams.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        for stream in self._streams.values():
            if stream.upstream_reader is not None:
                stream.upstream_reader.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()
        for stream in list(self._streams.values()):
            stream.send_pending()
            if stream.upstream_reader is not None and not stream.write_paused:
                stream.upstream_reader.resume_reading()
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.rx += len(data)
        engine = self._h2
        try:
            engine.receive(data)
        except H2Error as exc:
            self._protocol_error(exc)
            return
        malformed = engine.malformed_streams - self._malformed_seen
        if malformed:
            # Requests the engine reset as malformed count against the reset budget like refused ones.
            self._malformed_seen = engine.malformed_streams
            if self._count_resets(malformed):
                return
        # At the end of this loop iteration, with whatever else the iteration queued (the answers of other
        # streams, what the upstream side delivered): one write, not one per read.
        if not self._closing:
            self.flush()

    # -- what the client sent (H2Events) ---------------------------------------------------------------

    def h2_ping(self) -> None:
        self._pings += 1
        self._flood_check(self._pings, MAX_PINGS_PER_SECOND, PING_FLOOD)

    def h2_settings(self) -> None:
        self._settings_seen += 1
        self._flood_check(self._settings_seen, MAX_SETTINGS_PER_SECOND, SETTINGS_FLOOD)

    def h2_goaway(self, last_stream_id: int, code: int) -> None:
        """The client's GOAWAY: it opens no more streams, and the ones under way still get their responses
        (RFC 9113 section 6.8): nothing new is accepted (`draining`), and the connection closes once those
        streams are done."""
        self.drain()

    def h2_headers(self, stream_id: int, fields: Headers, end: bool) -> None:
        config = self._http2
        if self.draining or len(self._streams) >= config.max_concurrent_streams:
            # Over the advertised limit (or after our GOAWAY): refused, never queued; the client may retry it.
            if not self.draining:
                self.listener.http2_protection(STREAM_LIMIT)
            self._h2.reset_stream(stream_id, REFUSED_STREAM)
            self._count_resets(1)
            return
        now = self.now()
        stream = H2Stream(self, stream_id, _EMPTY_HEAD, now)
        self._streams[stream_id] = stream
        self._last_stream = max(self._last_stream, stream_id)
        self.idle_since = now
        try:
            reply = self._accept(stream, fields, not end)
        except BadRequest as refused:
            reply = refused.reply()
        if reply is not None:
            self.listener.refuse(stream, reply)
            return
        self._start_handler(stream)

    def _accept(self, stream: H2Stream, fields: Headers, has_body: bool) -> LocalReply | None:
        """Read a request's fields into `stream` (through `accept_head`, as HTTP/1 heads); the reply the
        sidecar answers instead of handing it over, or None."""
        settings = self.listener.settings
        if len(fields) > settings.max_headers + 4:
            self.listener.http2_protection(HEADER_LIST_SIZE)
            return local_reply(Cause.HEAD_TOO_LARGE)
        method, target, headers = request_fields(fields)
        accepted = accept_head(method, target, headers, "1.1", True, False, settings)
        stream.head = accepted.head
        # A gRPC call (HTTP/2 carries them): gRPC-shaped local replies, grpc-status verdicts, grpc-timeout.
        stream.grpc = is_grpc(first_header(headers, b"content-type"))
        stream.trailers_wanted = stream.grpc or first_header(headers, b"te") == b"trailers"
        stream.head_only = method == b"HEAD"
        if has_body:
            body = H2RequestBody(stream, accepted.content_length)
            stream.body = stream.h2_body = body
            stream.expect_continue = accepted.expect_continue
        return accepted.local

    def _start_handler(self, stream: H2Stream) -> None:
        stream.task = self._loop.create_task(self._run(stream))
        idle = self.listener.settings.stream_idle_timeout
        if idle:
            # The connection's one timer must fire by this stream's idle deadline (usually it already does).
            deadline = stream.started_at + idle
            timer = self._timer
            if timer is None or timer.when() > deadline:
                self._arm(deadline)

    async def _run(self, stream: H2Stream) -> None:
        stream.handler_started = True
        try:
            await self.listener.handle(stream)
        except asyncio.CancelledError:
            stream.answer_cancelled()
        except Exception:
            log.exception("request handler failed (request id %s)", stream.request_id.decode("latin-1"))
            if not stream.response_started:
                stream.send_local(local_reply(Cause.INTERNAL))
            elif not stream.response_done:
                stream.abort()
        self.flush()

    def h2_data(self, stream_id: int, data: bytes, flow: int) -> None:
        stream = self._streams.get(stream_id)
        body = stream.h2_body if stream is not None else None
        if stream is None or body is None or body.complete:
            self.acknowledge(stream_id, flow)  # a stream already answered or reset: only the window matters
            return
        limit = self.listener.settings.max_request_body
        if limit and body.received + len(data) > limit:
            self.acknowledge(stream_id, flow)
            self._fail_body(stream, local_reply(Cause.BODY_TOO_LARGE))
            return
        stream.last_activity = self.now()
        body.feed(data, flow)

    def h2_end(self, stream_id: int) -> None:
        self._body_end(stream_id, None)

    def h2_trailers(self, stream_id: int, fields: Headers) -> None:
        self._body_end(stream_id, fields)

    def _body_end(self, stream_id: int, trailers: Headers | None) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.h2_body is not None and not stream.h2_body.complete:
            stream.last_activity = self.now()
            stream.h2_body.finish(trailers)

    def _fail_body(self, stream: H2Stream, reply: LocalReply) -> None:
        """A body over the limit: answered `reply` (or reset once the response started), never forwarded."""
        if stream.task is None or not stream.handler_started:
            self._cancel(stream, BODY_ERROR, reply)
        else:
            stream.cancel(BODY_ERROR, reply)

    def h2_reset(self, stream_id: int, code: int, remote: bool) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            # Before the flood check: a connection it closes no longer knows this stream, whose upstream
            # call must stop too.
            self._client_gone(stream)
            self.acknowledge(stream.stream_id, stream.release_window())
        if remote:
            self._count_resets(1)

    def _count_resets(self, count: int) -> bool:
        """A stream that ended without an answer: reset by the client, refused by us, or malformed. More
        than max_resets_per_second of them close the connection (rapid reset; and each of ours queues a
        RST_STREAM for a client that may not read them)."""
        self._resets += count
        return self._flood_check(self._resets, self._http2.max_resets_per_second, RAPID_RESET)

    def _client_gone(self, stream: H2Stream) -> None:
        if stream.response_done:
            return
        stream.client_reset()
        stream.response_done = True
        if stream.task is not None:
            self._cancel(stream, CLIENT_GONE)

    def _cancel(self, stream: H2Stream, reason: CancelReason, reply: LocalReply | None = None) -> None:
        """Stop a stream's handler (`RequestStream.cancel`); one that never ran is answered as refused."""
        stream.cancel(reason, reply)
        if stream.task is not None and stream.handler_started:
            return
        stream.task = None
        self.listener.refuse(stream, None)

    def h2_window(self, stream_id: int) -> None:
        if stream_id:
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream.send_pending()
            return
        for stream in list(self._streams.values()):
            stream.send_pending()

    # -- protections ---------------------------------------------------------------------------------

    def _flood_check(self, count: int, limit: int, reason: str) -> bool:
        """True (and the connection closed with GOAWAY ENHANCE_YOUR_CALM) when `count` frames in this
        one-second window exceed `limit`."""
        now = self.now()
        if now - self._counts_since >= 1.0:
            self._counts_since = now
            self._resets = self._pings = self._settings_seen = 0
            return False
        if count <= limit:
            return False
        self.listener.http2_protection(reason)
        self._goaway(ENHANCE_YOUR_CALM)
        return True

    def _protocol_error(self, exc: H2Error) -> None:
        """The engine refused what the client sent and queued its GOAWAY: count the protection it stands for
        (header_list_size, continuation_flood, stream_limit), close."""
        if exc.protection:
            self.listener.http2_protection(exc.protection)
        log.debug("HTTP/2 connection from %s closed: %s", self.peer_ip.decode("latin-1"), exc)
        self.flush_now()
        self._close_now()

    def _goaway(self, code: int) -> None:
        """Send GOAWAY with `code` and close: the connection is over (streams under way are reset)."""
        self._h2.goaway(code, self._last_stream)
        self._h2.stop()
        self.flush_now()
        self._close_now()

    def _close_now(self) -> None:
        for stream in list(self._streams.values()):
            self._client_gone(stream)
        self._streams.clear()
        self.close()

    # -- what streams call -----------------------------------------------------------------------------

    def acknowledge(self, stream_id: int, flow: int) -> None:
        if flow and not self._closing:
            self._h2.acknowledge(stream_id, flow)
            # Out at once: an acknowledgement made outside a read (a sink attached by the handler, an upstream
            # resuming) is what a client waiting on its window needs.
            self.flush()

    def window(self, stream_id: int) -> int:
        return self._h2.window(stream_id)

    # A stream the client has just reset (its RST_STREAM read in the same loop turn as the handler's write)
    # is gone from the engine: what is written to it is dropped, as on a socket that is gone.

    def send_headers(self, stream_id: int, fields: Headers, end: bool) -> None:
        if not self._closing and self._h2.send_headers(stream_id, fields, end):
            self.flush()

    def send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        if not self._closing and self._h2.send_data(stream_id, data, end):
            self.flush()

    def end_stream(self, stream_id: int, trailers: Headers | None) -> None:
        if self._closing:
            return
        if trailers:
            self._h2.send_headers(stream_id, trailers, True)
        else:
            self._h2.end_stream(stream_id)
        self.flush()

    def reset(self, stream_id: int, code: int) -> None:
        if not self._closing and self._h2.reset_stream(stream_id, code):
            self.flush()

    def _report_traffic(self) -> None:
        self._traffic.add(self.rx, self.tx)
        self.rx = self.tx = 0

    def stream_done(self, stream: H2Stream) -> None:
        """A stream's response is complete (or reset): forget it; a request body still coming is refused."""
        if self._streams.pop(stream.stream_id, None) is None:
            return
        self._report_traffic()
        stream.upstream_reader = None
        body = stream.h2_body
        if body is not None and not body.complete and not stream.aborted and not self._closing:
            # Answered before the client finished its body (a 413, or an early answer): it may stop sending.
            self._h2.reset_stream(stream.stream_id, NO_ERROR)
        self.acknowledge(stream.stream_id, stream.release_window())
        self.flush()
        if not self._streams:
            self.idle_since = self.now()
            if self.draining:
                self.close()

    def flush(self) -> None:
        """Write what the engine has queued, once per loop iteration: the frames of every stream answered in one
        iteration (many handlers finish together under load) go out in one write."""
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_pending = False
        data = self._h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            self.tx += len(data)
            transport.write(data)

    # -- connection lifetime (DownstreamConnection) -------------------------------------------------------

    def drain(self) -> None:
        """GOAWAY with the last stream id handed over: those finish, later ones are refused; then close."""
        if self.draining or self._closing:
            return
        self.draining = True
        self._h2.goaway(NO_ERROR, self._last_stream)
        self.flush_now()
        if not self._streams:
            self.close()

    def close(self) -> None:
        transport = self.transport
        if not self._closing and transport is not None:
            self.flush_now()
            self._closing = True
            self._h2.stop()
            # Not from inside this read: uvloop's TLS transport, closed while it is delivering the bytes that
            # come just before the client's close_notify (a GOAWAY, then the TLS close), runs its shutdown
            # twice and fails the connection with "cannot switch state". Next iteration, the read is done.
            self._loop.call_soon(transport.close)

    def abort(self) -> None:
        if self.transport is not None:
            self._closing = True
            self._h2.stop()
            self.transport.abort()

    # -- timer ---------------------------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """The connection's one timer: streams without a byte moving for stream_idle_timeout are cancelled
        (504, or a reset); a connection without streams for idle_timeout is closed."""
        self._timer = None
        if self._closing:
            return
        now = self.now()
        settings = self.listener.settings
        deadline = now + min(settings.idle_timeout, settings.header_read_timeout)
        idle = settings.stream_idle_timeout
        if self._streams:
            if idle:
                for stream in list(self._streams.values()):
                    deadline = min(deadline, self._check_idle(stream, now, idle))
        elif now >= self.idle_since + settings.idle_timeout:
            self.drain()
            return
        else:
            deadline = min(deadline, self.idle_since + settings.idle_timeout)
        self._arm(deadline)

    def _check_idle(self, stream: H2Stream, now: float, idle: float) -> float:
        stream_deadline = stream.last_activity + idle
        if now < stream_deadline or stream.cancel_reason is not None:
            return stream_deadline if now < stream_deadline else now + idle
        if stream.task is not None:
            self._cancel(stream, STREAM_IDLE, local_reply(Cause.TIMEOUT, "stream idle timeout"))
        else:
            stream.abort()
        self.flush()
        return now + idle


def request_fields(fields: Headers) -> tuple[bytes, bytes, Headers]:
    """An HTTP/2 request's fields -> (method, target, HTTP/1-style headers with Host): what `accept_head`
    takes. `:authority` becomes Host (a Host that differs is refused), `:path` the target (CONNECT's is its
    authority), and cookie crumbs are joined into one field (RFC 9113 section 8.2.3)."""
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    cookies: list[bytes] = []
    host: bytes | None = None
    for name, value in fields:
        if name[:1] == b":":
            pseudo[name] = value  # the engine has refused repeated, unknown or misplaced pseudo-header fields
        elif name == b"host":
            if host is not None and host != value:
                raise BadRequest("repeated Host header")
            host = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            headers.append((name, value))
    authority = pseudo.get(b":authority", b"")
    if authority:
        if host is not None and host != authority:
            raise BadRequest("Host differs from :authority")
        host = authority
    if host is not None:
        headers.insert(0, (b"host", host))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    return pseudo.get(b":method", b""), pseudo.get(b":path", b"") or authority, headers


_DEFAULT_HTTP2 = Http2Settings()
_EMPTY_HEAD = RequestHead(method=b"", path="", query=b"", authority="", host_header=b"", headers=[])

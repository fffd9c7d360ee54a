"""The upstream side of HTTP/1.1: one `ClientConnection` (an asyncio.Protocol) per upstream socket.

Owns sending one request at a time (head, then a streamed or whole body, re-framed as Content-Length
or chunked), parsing the response with httptools, splicing the response body straight into the
downstream exchange (no coroutine hop per chunk), backpressure both ways, HEAD / 1xx / 204 / 304
framing, and the raw tunnel after a 101. A connection that finishes a keep-alive exchange cleanly
hands itself back through `on_idle` (the pool's hook); one that sends bytes beyond the response (an
unsolicited second response: response splitting) has them dropped and is closed, never pooled. Over TLS
(the pool made the handshake), a fatal TLS alert before any byte of the first response means the upstream
refused the handshake after our side finished it (TLS 1.3 checks the client certificate then): the
request was never read, so that is a connect failure, not a reset. Must not know routes, clusters or policy.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol, cast

import httptools

from proxy.errors import FailureKind, UpstreamError
from proxy.http.headers import (
    CHUNKED_LINE,
    X_REQUEST_ID,
    chunk,
    connection_tokens,
    content_length_line,
    last_chunk,
    serialize_request,
    trailer_fields,
)
from proxy.message import HOP_BY_HOP, Headers, RequestHead, ResponseHead, reason_phrase
from proxy.stream import NO_BODY, ReadControl, ResponseReady, TunnelEnd, UpstreamStream

__all__ = ["NO_BODY", "ClientConnection", "ResponseReady", "ResponseSink"]


class ResponseSink(Protocol):
    """Where a response body is spliced: the request stream (`proxy.stream.RequestStream`).

    A protocol rather than the class itself: compiled (mypyc) code checks a concrete parameter type at
    run time, and the codec's tests drive this module with their own sinks.
    """

    upstream_reader: ReadControl | None

    @property
    def write_paused(self) -> bool: ...

    def write_body(self, data: bytes) -> None: ...

    def abort(self) -> None: ...


# Hop-by-hop headers and the upstream's framing: the downstream response is framed anew. The codec
# writes the request's x-request-id itself, so an upstream's echo of it would be a duplicate.
_REFRAMED = HOP_BY_HOP | {b"content-length", X_REQUEST_ID}
# The handshake headers of a WebSocket upgrade (hop-by-hop, so written here rather than forwarded).
_UPGRADE_LINES = b"connection: upgrade\r\nupgrade: websocket\r\n"


class _Unsolicited(Exception):
    """Raised in parser callbacks for bytes past the end of the response (they must reach no one)."""


class _HeadTooLarge(Exception):
    """Raised in parser callbacks when a response head or its trailers pass the cluster's bounds."""


class _BadResponse(Exception):
    """Raised in parser callbacks for a head the sidecar will not relay (its framing or status)."""


# Response heads and trailers default to the request side's bounds (Envoy's 60 KiB and 100 headers).
DEFAULT_MAX_HEAD_BYTES = 60 * 1024
DEFAULT_MAX_HEADERS = 100


class ClientConnection(asyncio.Protocol, UpstreamStream):
    """One keep-alive connection to an upstream endpoint."""

    __slots__ = (
        "_body",
        "_body_chunked",
        "_chunked",
        "_complete",
        "_content_length",
        "_done_waiter",
        "_early",
        "_error",
        "_head_bytes",
        "_head_request",
        "_head_waiter",
        "_header_count",
        "_headers",
        "_in_trailers",
        "_keep_alive",
        "_loop",
        "_max_head_bytes",
        "_max_headers",
        "_read_paused",
        "_reason",
        "_response_bytes",
        "_skip_message",
        "_status",
        "_trailers",
        "_tunnel",
        "_unparsed",
        "_upgraded",
        "body_reader",
        "closed",
        "context",
        "downstream",
        "on_idle",
        "on_lost",
        "parser",
        "requests_sent",
        "rx",
        "transport",
        "tx",
        "write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, context: str,
                 max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, max_headers: int = DEFAULT_MAX_HEADERS) -> None:
        self._loop = loop
        self.context = context
        self._max_head_bytes = max_head_bytes
        self._max_headers = max_headers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.on_idle: Callable[[Any], None] | None = None
        # The pool's hook for a closed connection (so its count of open connections stays true).
        self.on_lost: Callable[[Any], None] | None = None
        self.requests_sent = 0
        # Bytes read and written, not yet reported (the pool adds them to the cluster's counters).
        self.rx = 0
        self.tx = 0
        self.downstream: ResponseSink | None = None
        # The client connection whose request body streams into this one (paused while we cannot write).
        self.body_reader: ReadControl | None = None
        self.write_paused = False
        self._read_paused = False
        self._reset_state()
        self._head_waiter: asyncio.Future[ResponseReady] | None = None
        self._done_waiter: asyncio.Future[None] | None = None
        self._tunnel: TunnelEnd | None = None
        self._early = b""
        self._upgraded = False

    def _reset_state(self) -> None:
        self._headers: Headers = []
        self._status = 0
        self._reason = b""
        self._content_length: int | None = None
        self._chunked = False
        self._in_trailers = False
        self._skip_message = False
        self._complete = False
        self._keep_alive = True
        self._head_request = False
        self._response_bytes = 0
        self._body: list[bytes] = []
        self._body_chunked = False
        # Head (or trailer) bytes and lines seen by on_header, against the cluster's bounds.
        self._head_bytes = 0
        self._header_count = 0
        # Bytes fed to the parser that it has not yet handed over as a complete head, header line or body
        # bytes: llhttp (and httptools, which grows a field by concatenation) would otherwise buffer an
        # endless status line, header line, chunk extension or trailer line without bound.
        self._unparsed = 0
        # The failure that ended this exchange, once one has (the connection is then being aborted).
        self._error: UpstreamError | None = None
        # The response's trailer fields (chunked responses), forwarded with the end of the body.
        self._trailers: Headers | None = None

    # -- sending -----------------------------------------------------------------------------------

    def send(self, head: RequestHead, extra: tuple[bytes, bytes], length: int | None, whole: bytes | None,
             trailers: Headers | None, upgrade: bool) -> None:
        """Start an exchange: write the request head, framed for a body of `length` bytes (NO_BODY; None:
        unknown, sent chunked), with the `extra` header and, for `upgrade`, the WebSocket handshake headers;
        then the whole body (and its trailers) when it is already known."""
        self._reset_state()
        chunked = length is None
        self._head_request = head.method == b"HEAD"
        self._body_chunked = chunked
        self.requests_sent += 1
        self._head_waiter = self._loop.create_future()
        self._done_waiter = None
        if chunked:
            framing = CHUNKED_LINE
        elif length is not None and length >= 0:
            framing = content_length_line(length)
        else:
            framing = b""
        if upgrade:
            framing += _UPGRADE_LINES
        request = serialize_request(head, extra, framing)
        assert self.transport is not None
        if whole:
            request = request + chunk(whole) + last_chunk(trailers) if chunked else request + whole
        elif whole is not None and chunked:
            request = request + last_chunk(trailers)
        self.tx += len(request)
        self.transport.write(request)

    # BodySink: the downstream request body streams through these.
    def write_body(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        if self._body_chunked:
            if data:
                framed = chunk(data)
                self.tx += len(framed)
                self.transport.write(framed)
        else:
            self.tx += len(data)
            self.transport.write(data)

    def set_body_reader(self, reader: ReadControl | None) -> None:
        """Name the client connection whose request body streams into this one: it is paused while
        our write buffer is full, so the body is bounded by socket buffers, not held in memory.
        None when the body is done with this connection (a client it had paused is resumed)."""
        previous = self.body_reader
        self.body_reader = reader
        if self.write_paused:
            if previous is not None and previous is not reader:
                previous.resume_reading()
            if reader is not None:
                reader.pause_reading()

    def end_body(self, trailers: Headers | None = None) -> None:
        if self._body_chunked and not self.closed and self.transport is not None:
            last = last_chunk(trailers)
            self.tx += len(last)
            self.transport.write(last)

    async def response_head(self) -> ResponseReady:
        """Wait for the response head (1xx other than 101 are skipped)."""
        waiter = self._head_waiter
        assert waiter is not None
        return await waiter

    # -- splicing the response body into the downstream --------------------------------------------

    def take_body(self) -> bytes:
        """The response body bytes that arrived with the head (sent with the head in one write)."""
        body = self._body
        if not body:
            return b""
        self._body = []
        return body[0] if len(body) == 1 else b"".join(body)

    def attach(self, exchange: ResponseSink) -> bool:
        """Stream the rest of the response body into `exchange`; True when the response is complete."""
        self.downstream = exchange
        exchange.upstream_reader = self
        if exchange.write_paused:
            # The client is still behind on an earlier response: read nothing more until it catches up.
            self.pause_reading()
        body, self._body = self._body, []
        for piece in body:
            exchange.write_body(piece)
        return self._complete

    @property
    def keep_alive(self) -> bool:
        """Whether the upstream lets this connection persist after the current response."""
        return self._keep_alive

    @property
    def trailers(self) -> Headers | None:
        """The response's trailer fields, once the response is complete (None when it had none)."""
        return self._trailers

    async def response_done(self) -> None:
        """Wait until the response body has been fully passed downstream."""
        if self._error is not None:
            raise self._error
        if self._complete:
            return
        self._done_waiter = self._loop.create_future()
        await self._done_waiter

    def detach(self) -> None:
        self.downstream = None
        self.set_body_reader(None)

    # ReadControl: the downstream's write buffer is full, stop reading the upstream.
    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    # -- transport events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_lost is not None:
            self.on_lost(self)
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
            return
        if self._error is not None:
            # Already failed (and answered for): a close-delimited body cut short must not look complete.
            if self._done_waiter is not None and not self._done_waiter.done():
                self._done_waiter.set_exception(self._error)
            return
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(self._lost_before_response(exc))
        elif not self._complete:
            if self._keep_alive is False and self._content_length is None and not self._chunked and exc is None:
                # A close-delimited body ends with the connection: that is its normal end (a FIN; a reset
                # cuts it short, and a body cut short must never look complete).
                self.on_message_complete()
                return
            if self.downstream is not None:
                self.downstream.abort()
            if self._done_waiter is not None and not self._done_waiter.done():
                self._done_waiter.set_exception(
                    UpstreamError(FailureKind.RESET, f"{self.context}: connection closed mid-response",
                                  response_started=True))

    def _lost_before_response(self, exc: Exception | None) -> UpstreamError:
        """The error of a connection lost while its request waits for the response head."""
        if self._response_bytes == 0 and self.requests_sent == 1 and isinstance(exc, ssl.SSLError):
            reason = exc.reason or ""
            if "_ALERT_" in reason:
                # TLS 1.3: the upstream checked our certificate after our side of the handshake was done,
                # and refused it before reading the request.
                detail = reason.lower().replace("_", " ")
                return UpstreamError(FailureKind.CONNECT_REFUSED,
                                     f"{self.context}: TLS handshake failed: the upstream refused it ({detail})")
        # Nothing came back on a reused connection: the upstream closed it while idle (a known race).
        stale = self._response_bytes == 0 and self.requests_sent > 1
        detail = "connection closed before the response"
        if (self._response_bytes == 0 and self.requests_sent == 1 and self.transport is not None
                and self.transport.get_extra_info("ssl_object") is not None):
            # An asyncio (or uvloop) TLS server that refuses our certificate closes without an alert: the
            # request may have been read too, for all we know, so this stays a reset; the hint helps.
            detail += " on a new TLS connection (does the upstream refuse the client certificate?)"
        return UpstreamError(FailureKind.RESET, f"{self.context}: {detail}", stale=stale)

    def data_received(self, data: bytes) -> None:
        self.rx += len(data)
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self._upgraded:
            self._early += data
            return
        if self._error is not None:
            return  # failed and being aborted: nothing more of this response reaches anyone
        self._response_bytes += len(data)
        self._unparsed += len(data)
        if self._head_waiter is None:
            # Bytes while no request is outstanding: the upstream is confused; never reuse it.
            self.close()
            return
        if self._complete:
            # The response is whole but the attempt has not finished with it yet: whatever this is, it
            # answers nothing we asked. Drop it; finish() then closes instead of pooling.
            self._keep_alive = False
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded = True
            self._early = data[upgrade.args[0]:]
        except httptools.HttpParserError as exc:
            reason = exc.__context__
            if isinstance(reason, _Unsolicited):
                self._keep_alive = False  # the bytes after the response are dropped with the parser's state
                return
            if isinstance(reason, _HeadTooLarge):
                self._fail(FailureKind.HEADERS_TOO_LARGE, self._too_large())
            else:
                self._fail(FailureKind.PROTOCOL, f"bad response: {reason or exc}")
            return
        # In the head, `_unparsed` counts every byte of it; in trailers, the complete lines are `_head_bytes`.
        held = self._unparsed + (self._head_bytes if self._in_trailers else 0)
        if held > self._max_head_bytes:
            # One line (status, header, chunk size or trailer) that does not end: refused at the head bound.
            self._fail(FailureKind.HEADERS_TOO_LARGE, self._too_large())
            return
        if self._complete and self._head_request:
            # llhttp cannot be told a response answers HEAD; a fresh parser keeps the stream in step.
            self.parser = httptools.HttpResponseParser(self)

    def _too_large(self) -> str:
        part = "trailers" if self._in_trailers else "head"
        return (f"response {part} over max_response_headers ({self._max_head_bytes} bytes) "
                f"or max_response_header_count ({self._max_headers})")

    def _fail(self, kind: FailureKind, detail: str) -> None:
        """The response cannot be relayed: fail the attempt (or break off the started response), and
        abort the connection, which is never pooled."""
        error = UpstreamError(kind, f"{self.context}: {detail}",
                              response_started=self._head_waiter is not None and self._head_waiter.done())
        self._error = error
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(error)
        elif self.downstream is not None:
            self.downstream.abort()
            if self._done_waiter is not None and not self._done_waiter.done():
                self._done_waiter.set_exception(error)
        self.abort()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._tunnel is not None:
            self._tunnel.pause_reading()
        elif self.body_reader is not None:
            self.body_reader.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._tunnel is not None:
            self._tunnel.resume_reading()
        elif self.body_reader is not None:
            self.body_reader.resume_reading()

    # -- parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Unsolicited()  # a second response in the same read as the first
        self._headers = []
        self._in_trailers = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # Head and trailers are bounded alike, each on its own (the counters restart after the head).
        self._head_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._head_bytes > self._max_head_bytes or self._header_count > self._max_headers:
            raise _HeadTooLarge()
        if self._in_trailers:
            self._unparsed = 0  # a complete trailer line: the parser holds none of it any more
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name.lower(), value))
        else:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_trailers = True
        self._head_bytes = self._header_count = self._unparsed = 0
        status: int = self.parser.get_status_code()
        if status < 100 or status > 599:
            raise _BadResponse(f"status {status} is not in 100-599")
        if 100 <= status < 200 and status != 101:
            # Interim responses (100 Continue, 103) are not relayed: the sidecar answers Expect itself.
            self._skip_message = True
            return
        self._skip_message = False
        headers = self._headers
        has_connection = False
        content_length: int | None = None
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)
            elif name == b"transfer-encoding":
                # Only `chunked`, once: a body in any other coding is delimited by the close, and re-framing
                # it as chunked would strip the coding and invent a framing the upstream never sent.
                if self._chunked or value.strip().lower() != b"chunked":
                    raise _BadResponse(f"unsupported Transfer-Encoding {value[:64]!r}")
                self._chunked = True
            elif name == b"connection":
                has_connection = True
        kept = _relayed_headers(headers, status, has_connection)
        if self._head_request:
            # llhttp does not know this answers a HEAD: without a length it expects a close-delimited
            # body and says "not keep-alive". There is no body; only Connection and the version decide.
            self._keep_alive = _keep_alive(self.parser.get_http_version(), headers, has_connection)
        else:
            self._keep_alive = bool(self.parser.should_keep_alive())
        self._status = status
        self._content_length = None if self._chunked else content_length
        no_body = self._head_request or status in (204, 304) or status == 101
        head = ResponseHead(status, reason_phrase(status), kept)
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(ResponseReady(head, self._content_length, no_body))
        if self._head_request:
            self.on_message_complete()

    def on_body(self, data: bytes) -> None:
        if self._complete:
            raise _Unsolicited()  # "body" llhttp expects after a HEAD answer's head: there is none
        self._unparsed = 0
        exchange = self.downstream
        if exchange is not None:
            exchange.write_body(data)
        else:
            self._body.append(data)

    def on_message_complete(self) -> None:
        if self._skip_message:
            self._skip_message = False
            self._headers = []
            return
        if self._complete:
            return
        self._complete = True
        if self._trailers is not None:
            self._trailers = trailer_fields(self._trailers)
        waiter = self._done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- after the exchange ------------------------------------------------------------------------

    def finish(self, reusable: bool) -> None:
        """The exchange is over: go back to the pool when it ended cleanly on a keep-alive connection."""
        self.downstream = None
        self._head_waiter = None
        self._done_waiter = None
        self.set_body_reader(None)
        if reusable and self._complete and self._keep_alive and not self.closed and self.on_idle is not None:
            # The last bytes may have arrived just as the slow client made us pause: an idle pooled
            # connection must be reading, or it would never see its next response (or its close).
            self.resume_reading()
            self.on_idle(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    # -- tunnel (after 101) ------------------------------------------------------------------------

    def start_tunnel(self, downstream: TunnelEnd) -> None:
        self._tunnel = downstream
        self.downstream = None
        early, self._early = self._early, b""
        if early:
            downstream.write(early)
        if downstream.write_paused:
            self.pause_reading()

    def tunnel_write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.tx += len(data)
            self.transport.write(data)

    def tunnel_eof(self) -> None:
        """The client half-closed the tunnel: pass the FIN on (a WebSocket peer then closes its side)."""
        transport = self.transport
        if transport is not None and not self.closed:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                self.close()

    def tunnel_close(self) -> None:
        self._tunnel = None
        self.close()


def _relayed_headers(headers: Headers, status: int, has_connection: bool) -> Headers:
    """The response head's headers that go downstream: all but the upstream's framing, the hop-by-hop ones
    and those its `Connection` header names (`has_connection`: the head has one). A 101 keeps Connection
    and Upgrade."""
    if status == 101:
        # The upgrade handshake keeps Connection/Upgrade: the tunnel needs them end to end.
        return [(n, v) for n, v in headers if n not in (b"content-length", b"transfer-encoding",
                                                        b"keep-alive", b"te", b"trailer", X_REQUEST_ID)]
    if has_connection:
        named = connection_tokens(headers)
        return [(n, v) for n, v in headers
                if n not in _REFRAMED and not n.startswith(b"proxy-") and n not in named]
    return [(n, v) for n, v in headers if n not in _REFRAMED and not n.startswith(b"proxy-")]


def _keep_alive(version: str, headers: Headers, has_connection: bool) -> bool:
    """Persistence per RFC 9112 section 9.3: HTTP/1.1 unless `close`, HTTP/1.0 only with `keep-alive`."""
    tokens = connection_tokens(headers) if has_connection else frozenset()
    if version == "1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens

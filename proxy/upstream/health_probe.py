"""One active health check's exchange on its fresh connection: the request, and reading its answer.

Owns `Answer` (the connection's protocol: it sends `GET path` over HTTP/1.1, or over HTTP/2 on our engine, or
a gRPC health check, and settles `status` once the answer's status is known), the HTTP/1.1 request and
status line, and gRPC's health messages (`grpc.health.v1`: a HealthCheckRequest, a HealthCheckResponse's
serving status, read by hand: one string field, one varint). Everything it reads is bounded by
MAX_ANSWER_BYTES. The checker (`proxy.upstream.health`) opens the connection, bounds the wait and judges.
Must not know clusters, endpoints or thresholds.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

from proxy.http.h2_engine import DEFAULT_WINDOW, H2Engine, H2Error, error_name
from proxy.message import Headers, first_header

USER_AGENT: Final = "horizon-sidecar-health-check"
# The most of an answer read while looking for its status line.
MAX_ANSWER_BYTES: Final = 8 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: [\t -~\x80-\xff]*)?")


def _request(path: str, host: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n"
            "\r\n").encode("ascii")


GRPC_HEALTH_PATH = b"/grpc.health.v1.Health/Check"
# HealthCheckResponse.ServingStatus (grpc/health/v1/health.proto).
SERVING = 1
SERVING_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def grpc_health_request(service: str) -> bytes:
    """A HealthCheckRequest {service} as one gRPC message (protobuf field 1, a string; empty: left out)."""
    name = service.encode("utf-8")
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_health_status(frame: bytes) -> int:
    """The `status` of the HealthCheckResponse in a gRPC message (0, UNKNOWN, when the field is absent); -1
    when it is no such message (compressed, cut short, or not protobuf we can read)."""
    if len(frame) < 5 or frame[0] != 0:
        return -1
    length = int.from_bytes(frame[1:5], "big")
    message = frame[5:5 + length]
    if len(message) != length:
        return -1
    status = 0
    pos = 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        if key < 0:
            return -1
        if key & 7 == 0:  # a varint: field 1 is the status, others are skipped
            value, pos = _read_varint(message, pos)
            if value < 0:
                return -1
            if key >> 3 == 1:
                status = value
        elif key & 7 == 2:  # a length-delimited field (unknown to us): skipped
            size, pos = _read_varint(message, pos)
            if size < 0 or pos + size > len(message):
                return -1
            pos += size
        else:
            return -1
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it), or (-1, pos) when cut short or longer than 10 bytes."""
    value = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return -1, pos


class BadAnswer(Exception):
    """The answer ended, or grew past its bound, before a status line."""


class Answer(asyncio.Protocol):
    """Reads a check's answer until its status is known: an HTTP/1 status line (within MAX_ANSWER_BYTES), or
    over HTTP/2 the response HEADERS of the one stream (our engine's `H2Events`; the rest is ignored)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # The answer's HTTP status (a gRPC health check: 200 once the service is SERVING).
        self.status: asyncio.Future[int] = loop.create_future()
        self._buffer = bytearray()
        self._transport: asyncio.WriteTransport | None = None
        self._engine: H2Engine | None = None
        self._grpc = False

    def ask(self, transport: asyncio.WriteTransport, http2: bool, scheme: bytes, host: str, path: str | None,
            grpc_service: str | None = None) -> None:
        """Send the request: `GET path`, or (HTTP/2 only) a gRPC health check of `grpc_service`. Bytes that came
        before it (an HTTP/2 server's SETTINGS) are read now."""
        self._transport = transport
        if not http2:
            transport.write(_request(path or "/", host))
        else:
            engine = self._engine = H2Engine(self, True, 0, DEFAULT_WINDOW, DEFAULT_WINDOW, MAX_ANSWER_BYTES)
            engine.initiate()
            stream_id = engine.next_stream_id()
            fields = [(b":scheme", scheme), (b":authority", host.encode("ascii")),
                      (b"user-agent", USER_AGENT.encode("ascii"))]
            if grpc_service is None:
                engine.send_headers(stream_id, [(b":method", b"GET"), (b":path", (path or "/").encode("ascii")),
                                                *fields], True)
            else:
                self._grpc = True
                engine.send_headers(stream_id, [(b":method", b"POST"), (b":path", GRPC_HEALTH_PATH), *fields,
                                                (b"content-type", b"application/grpc"), (b"te", b"trailers")], False)
                engine.send_data(stream_id, grpc_health_request(grpc_service), True)
            transport.write(engine.data_to_send())
        early, self._buffer = bytes(self._buffer), bytearray()
        if early:
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            return
        if self._transport is None:
            if len(self._buffer) + len(data) > MAX_ANSWER_BYTES:
                self._fail(f"malformed answer ({MAX_ANSWER_BYTES} bytes before the check asked)")
            self._buffer += data
            return
        engine = self._engine
        if engine is None:
            self._status_line(data)
            return
        try:
            engine.receive(data)
        except H2Error as exc:
            self._fail(f"HTTP/2 protocol error ({exc})")
        out = engine.data_to_send()  # SETTINGS and PING acknowledgements
        if out:
            self._transport.write(out)

    def _status_line(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\n", 0, MAX_ANSWER_BYTES)
        if end >= 0:
            found = _STATUS_LINE.fullmatch(bytes(buffer[:end]).rstrip(b"\r"))
            if found is None:
                self._fail("malformed answer (no HTTP/1 status line)")
            else:
                self.status.set_result(int(found.group(1)))
        elif len(buffer) >= MAX_ANSWER_BYTES:
            self._fail(f"malformed answer (no status line in {MAX_ANSWER_BYTES} bytes)")

    def _fail(self, why: str) -> None:
        if not self.status.done():
            self.status.set_exception(BadAnswer(why))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("connection closed before a status line" if self._engine is None
                   else "connection closed before the response HEADERS")

    # -- H2Events: only the answer's head and what ends the stream matter --------------------------------

    def h2_headers(self, stream_id: int, fields: Headers, end: bool) -> None:
        if self.status.done():
            return
        status = int(fields[0][1])  # the engine checked it is a three-digit :status
        if not self._grpc or status != 200:
            self.status.set_result(status)
        elif end:
            self._grpc_verdict(fields)  # trailers-only: an error status, or a server with no health service

    def h2_reset(self, stream_id: int, code: int, remote: bool) -> None:
        self._fail(f"stream reset ({error_name(code)})")

    def h2_goaway(self, last_stream_id: int, code: int) -> None:
        if last_stream_id < 1:
            self._fail(f"GOAWAY before the answer ({error_name(code)})")

    def h2_trailers(self, stream_id: int, fields: Headers) -> None:
        if self._grpc:
            self._grpc_verdict(fields)

    def h2_data(self, stream_id: int, data: bytes, flow: int) -> None:
        if self._grpc:
            self._buffer += data
            if len(self._buffer) > MAX_ANSWER_BYTES:
                self._fail(f"gRPC health answer over {MAX_ANSWER_BYTES} bytes")

    def h2_end(self, stream_id: int) -> None:
        self._fail("stream ended without an answer")

    def _grpc_verdict(self, trailers: Headers) -> None:
        """A gRPC health check's end: grpc-status 0 and a SERVING response pass (status 200)."""
        code = first_header(trailers, b"grpc-status")
        if code != b"0":
            message = (first_header(trailers, b"grpc-message") or b"").decode("latin-1")[:100]
            self._fail(f"grpc-status {(code or b'none').decode('latin-1')}{': ' + message if message else ''}")
            return
        serving = grpc_health_status(bytes(self._buffer))
        if serving == SERVING:
            if not self.status.done():
                self.status.set_result(200)
        else:
            self._fail(f"gRPC health {SERVING_NAMES.get(serving, 'answer malformed')}")

    def h2_window(self, stream_id: int) -> None:
        pass

    def h2_settings(self) -> None:
        pass

    def h2_ping(self) -> None:
        pass

"""Property tests of the upstream codec (ClientConnection) without a network.

A ClientConnection is driven the way an upstream attempt drives it (send, await the head, take the
body that came with it, attach a downstream exchange, await the end, finish) while a fake transport
stands in for the socket. Hypothesis generates valid responses (Content-Length, chunked, 204, 304,
answers to HEAD, interim 1xx before the final head, a close-delimited last body) and cuts the bytes at
arbitrary points: heads and bodies must not depend on where the cuts fall. Arbitrary and mutated bytes
may only end as a parsed response, a pending wait, or an `UpstreamError` of kind PROTOCOL (RESET once
the connection is lost), never another exception.
"""

from __future__ import annotations

import asyncio
import ssl
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.errors import FailureKind, UpstreamError
from proxy.http.client import NO_BODY, ClientConnection
from proxy.message import RequestHead
from tests.unit.http.fakes import Driver, FakeTransport, split_at

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REQUEST = RequestHead(b"GET", "/", b"", "up", b"up", [])
HEAD_REQUEST = RequestHead(b"HEAD", "/", b"", "up", b"up", [])
ATTEMPT = (b"x-sidecar-attempt", b"1")


class FakeDownstreamConn:
    """The downstream connection behind a FakeExchange (its reading and its write-buffer state)."""

    def __init__(self) -> None:
        self.paused = False
        self.write_paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeExchange:
    """The downstream side of an attempt: collects the response body the connection splices into it."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.aborted = False
        self.upstream_reader: object = None
        self.conn = FakeDownstreamConn()

    @property
    def write_paused(self) -> bool:
        return self.conn.write_paused

    def write_body(self, data: bytes) -> None:
        self.body += data

    def abort(self) -> None:
        self.aborted = True


@dataclass
class Result:
    """What one attempt saw: the head (status, headers, content_length, no_body) and the body, or an error."""

    head: tuple[object, ...] | None = None
    body: bytes = b""
    error: UpstreamError | None = None
    done: bool = False
    exchange: FakeExchange = field(default_factory=FakeExchange)


async def attempt(conn: ClientConnection, result: Result, reusable: bool = True) -> None:
    """What an upstream attempt does with a connection once the request is sent."""
    try:
        ready = await conn.response_head()
        head = ready.head
        result.head = (head.status, tuple(head.headers), ready.content_length, ready.no_body, conn.keep_alive)
        first = conn.take_body()
        if not conn.attach(result.exchange):  # type: ignore[arg-type]
            await conn.response_done()
        result.body = first + bytes(result.exchange.body)
        conn.finish(reusable=reusable)
    except UpstreamError as error:
        result.error = error
        conn.detach()
    finally:
        result.done = True


@pytest.fixture(scope="module")
def driver() -> Iterator[Driver]:
    drv = Driver()
    yield drv
    drv.close()


@dataclass
class Session:
    conn: ClientConnection
    transport: FakeTransport
    idle: list[ClientConnection]
    results: list[Result]


def open_conn(driver: Driver) -> Session:
    driver.loop_errors.clear()
    driver.errors.records.clear()
    conn = ClientConnection(driver.loop, "cluster c: endpoint e")
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    idle: list[ClientConnection] = []
    conn.on_idle = idle.append
    return Session(conn, transport, idle, [])


def exchange(driver: Driver, session: Session, pieces: list[bytes], head_request: bool = False,
             settle_between: bool = False) -> Result:
    """Send one request on the session's connection, deliver the response `pieces`, run the attempt."""
    conn = session.conn
    conn.send(HEAD_REQUEST if head_request else REQUEST, ATTEMPT, NO_BODY, None, None, False)
    result = Result()
    session.results.append(result)
    driver.loop.create_task(attempt(conn, result))
    driver.settle(2)
    driver.feed(conn, session.transport, pieces, settle_between)
    driver.settle()
    return result


def close_session(driver: Driver, session: Session) -> None:
    session.conn.connection_lost(None)
    driver.settle()
    pending = [t for t in asyncio.all_tasks(driver.loop) if not t.done()]
    for task in pending:
        task.cancel()
    driver.settle()
    assert not pending, f"attempts still waiting after the connection was lost: {pending}"
    assert not driver.loop_errors, driver.loop_errors
    assert not driver.errors.records, [r.getMessage() for r in driver.errors.records]


# -- strategies: valid responses -----------------------------------------------------------------------

TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# What the client does not pass on from an upstream head: framing and hop-by-hop fields, and x-request-id
# (the downstream answer carries the request's own id, written by the server codec).
REFRAMED = {"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
            "x-request-id"}
VALUE_BYTES = [*range(0x21, 0x7F), 0x20, 0x09]

header_names = st.text(TOKEN, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in REFRAMED and not n.lower().startswith("proxy-"))
header_values = st.lists(st.sampled_from(VALUE_BYTES), max_size=24).map(bytes).map(lambda v: v.strip(b" \t"))


@dataclass
class Resp:
    """One generated response and what an attempt must see of it."""

    wire: bytes
    head_request: bool
    expected_head: tuple[object, ...]
    body: bytes
    close_delimited: bool


REASONS = {200: b"OK", 201: b"Created", 204: b"No Content", 301: b"Moved Permanently", 304: b"Not Modified",
           404: b"Not Found", 500: b"Internal Server Error", 503: b"Service Unavailable"}


@st.composite
def responses(draw: st.DrawFn, last: bool = False) -> Resp:
    head_request = draw(st.booleans())
    status = draw(st.sampled_from(sorted(REASONS)))
    extra = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    reason = draw(st.sampled_from([REASONS[status], b"Whatever You Like", b""]))
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n",
                                    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"]))
    no_body = head_request or status in (204, 304)
    framings = ["length", "chunked"] if not no_body else ["none", "length"]
    if head_request and status not in (204, 304):
        framings.remove("none")  # known bug, tested on its own: such a connection is not reused
    if last and not no_body:
        framings.append("close")
    framing = draw(st.sampled_from(framings))
    body = draw(st.binary(max_size=200)) if not no_body and framing != "none" else b""
    lines = [(name.encode(), value) for name, value in extra]
    payload = b""
    content_length: int | None = None
    if framing == "length":
        declared = len(body) if not no_body else draw(st.integers(0, 5000))
        lines.append((b"Content-Length", b"%d" % declared))
        content_length = declared
        payload = body
    elif framing == "chunked":
        lines.append((b"Transfer-Encoding", b"chunked"))
        cuts = draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=4))
        for chunk in (split_at(body, cuts) if body else []):
            payload += b"%x%s\r\n%s\r\n" % (len(chunk), draw(st.sampled_from([b"", b";x=y"])), chunk)
        payload += b"0\r\n" + draw(st.sampled_from([b"", b"X-Checksum: 1\r\n"])) + b"\r\n"
    elif framing == "close":
        lines.append((b"Connection", b"close"))
        payload = body
    position = draw(st.integers(0, len(lines)))
    lines = lines[position:] + lines[:position]  # framing headers anywhere among the others
    expected_headers = tuple((n.lower(), v) for n, v in lines if n.lower().decode() not in REFRAMED)
    wire = interim + b"HTTP/1.1 %d %s\r\n" % (status, reason)
    wire += b"".join(name + b": " + value + b"\r\n" for name, value in lines) + b"\r\n" + payload
    keep_alive = framing != "close"
    expected = (status, expected_headers, content_length, no_body, keep_alive)
    return Resp(wire, head_request, expected, body, framing == "close")


@st.composite
def conversations(draw: st.DrawFn) -> list[Resp]:
    count = draw(st.integers(1, 3))
    return [draw(responses(last=i == count - 1)) for i in range(count)]


cut_points = st.lists(st.integers(0, 2000), max_size=10)


def converse(driver: Driver, resps: list[Resp], cuts: list[int] | None, settle_between: bool = False
             ) -> list[Result]:
    session = open_conn(driver)
    for resp in resps:
        pieces = [resp.wire] if cuts is None else split_at(resp.wire, [c % (len(resp.wire) + 1) for c in cuts])
        exchange(driver, session, pieces, resp.head_request, settle_between)
        if resp.close_delimited:
            session.conn.connection_lost(None)  # the end of a close-delimited body
            driver.settle()
    results = list(session.results)
    idle = len(session.idle)
    close_session(driver, session)
    assert idle == len([r for r in resps if not r.close_delimited])
    return results


# -- valid responses: splitting changes nothing ------------------------------------------------------


@FAST
@given(resps=conversations(), cuts=cut_points, settle_between=st.booleans())
def test_valid_responses_parse_the_same_however_split(driver: Driver, resps: list[Resp], cuts: list[int],
                                                      settle_between: bool) -> None:
    whole = converse(driver, resps, None)
    split = converse(driver, resps, cuts, settle_between)
    for resp, a, b in zip(resps, whole, split, strict=True):
        assert a.error is None and b.error is None, (a.error, b.error)
        assert a.done and b.done
        assert a.head == resp.expected_head
        assert a.body == resp.body
        assert (b.head, b.body) == (a.head, a.body)
        assert not a.exchange.aborted and not b.exchange.aborted


@FAST
@given(resps=conversations())
def test_byte_at_a_time(driver: Driver, resps: list[Resp]) -> None:
    for resp, result in zip(resps, converse(driver, resps, list(range(1, 3000))), strict=True):
        assert result.error is None
        assert (result.head, result.body) == (resp.expected_head, resp.body)


# -- hostile bytes: a parsed response, a pending wait, or UpstreamError(PROTOCOL) ---------------------

FRAGMENTS = [
    b"HTTP/1.1 ", b"HTTP/1.0 ", b"HTTP/2 ", b"200", b"204", b"304", b"101", b"100", b"999", b" OK", b"\r\n",
    b"Content-Length: 5\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n", b"Content-Length: x\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip\r\n", b"Connection: close\r\n",
    b"Upgrade: websocket\r\n", b"X: y\r\n", b" folded\r\n", b"\x00", b"\r", b"\n", b" ", b":", b"\xff",
    b"5\r\nhello\r\n", b"0\r\n\r\n", b"zz\r\n", b"hello",
]

garbage = st.binary(max_size=300) | st.lists(st.sampled_from(FRAGMENTS), max_size=20).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bool]:
    resp = draw(responses())
    data = bytearray(resp.wire)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 58, 59, 0x7F, 0xFF, *b"0aAz-"]))
        if action == "replace" and data:
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        elif data:
            del data[at]
    return bytes(data), resp.head_request


hostile = garbage.flatmap(lambda data: st.tuples(st.just(data), st.booleans())) | mutated()


@FAST
@given(case=hostile, cuts=cut_points)
def test_hostile_bytes_give_a_response_or_a_protocol_error(driver: Driver, case: tuple[bytes, bool],
                                                           cuts: list[int]) -> None:
    data, head_request = case
    session = open_conn(driver)
    result = exchange(driver, session, split_at(data, cuts), head_request)
    if result.error is not None:
        event("protocol error")
        assert result.error.kind is FailureKind.PROTOCOL, result.error
        assert session.transport.aborted, "a connection that sent garbage must not stay open"
        assert not session.idle
    elif result.done:
        event("complete response")
    else:
        event("pending")
    close_session(driver, session)
    # Once the connection is lost, a wait still pending ends as a RESET; nothing else is possible.
    if result.error is not None:
        assert result.error.kind in (FailureKind.PROTOCOL, FailureKind.RESET)


def test_bytes_with_no_request_outstanding_close_the_connection(driver: Driver) -> None:
    session = open_conn(driver)
    session.conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert session.transport.closed
    close_session(driver, session)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTX/1.1 200 OK\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.0\r\n",
])
def test_malformed_heads_give_protocol_error(driver: Driver, data: bytes) -> None:
    session = open_conn(driver)
    result = exchange(driver, session, [data])
    assert result.error is not None and result.error.kind is FailureKind.PROTOCOL
    assert not result.error.response_started
    assert session.transport.aborted
    close_session(driver, session)


def test_bad_chunk_mid_body_gives_protocol_error_and_aborts_downstream(driver: Driver) -> None:
    session = open_conn(driver)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    result = exchange(driver, session, [head])
    assert not result.done and result.head is not None
    session.conn.data_received(b"zz\r\nworld\r\n0\r\n\r\n")
    driver.settle()
    assert result.error is not None and result.error.kind is FailureKind.PROTOCOL
    assert result.error.response_started
    assert result.exchange.aborted and session.transport.aborted
    assert not session.idle
    close_session(driver, session)


def test_second_response_in_the_same_read_never_reaches_the_downstream(driver: Driver) -> None:
    session = open_conn(driver)
    data = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
    result = exchange(driver, session, [data])
    assert result.error is None and result.done
    assert result.body == b"hello"
    assert not session.idle, "a connection that sent an unsolicited response must not be reused"
    close_session(driver, session)


def test_second_response_after_attach_never_reaches_the_downstream(driver: Driver) -> None:
    session = open_conn(driver)
    result = exchange(driver, session, [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe"])
    assert result.head is not None and not result.done
    session.conn.data_received(b"llo" + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
    driver.settle()
    assert result.error is None and result.done
    assert result.body == b"hello"
    assert not session.idle
    close_session(driver, session)


def test_unframed_answer_to_head_keeps_the_connection(driver: Driver) -> None:
    session = open_conn(driver)
    result = exchange(driver, session, [b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n"], head_request=True)
    assert result.error is None and result.done
    assert result.head is not None and result.head[4] is True
    assert session.idle == [session.conn]
    close_session(driver, session)


def test_bytes_after_a_head_answer_are_dropped_and_the_connection_closed(driver: Driver) -> None:
    """A HEAD answer has no body whatever its Content-Length says: bytes after its head answer nothing."""
    session = open_conn(driver)
    result = exchange(driver, session, [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"], head_request=True)
    assert result.error is None and result.done
    assert result.body == b"" and result.exchange.body == b""
    assert not session.idle
    close_session(driver, session)


def test_unframed_answer_to_head_honours_connection_close(driver: Driver) -> None:
    session = open_conn(driver)
    result = exchange(driver, session, [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"], head_request=True)
    assert result.error is None and result.done
    assert result.head is not None and result.head[4] is False
    assert not session.idle
    close_session(driver, session)


# -- hostile heads and trailers: bounded by max_response_headers / max_response_header_count ----------

SMALL_HEAD = 512
FEW_HEADERS = 8


def open_bounded(driver: Driver) -> Session:
    session = open_conn(driver)
    conn = ClientConnection(driver.loop, "cluster c: endpoint e", SMALL_HEAD, FEW_HEADERS)
    conn.connection_made(session.transport)  # type: ignore[arg-type]
    conn.on_idle = session.idle.append
    session.conn = conn
    return session


@st.composite
def hostile_heads(draw: st.DrawFn) -> tuple[bytes, bool, bool]:
    """(wire bytes, fits the bounds, the section is a trailer section) for a head or trailers of random shape."""
    trailers = draw(st.booleans())
    lines = draw(st.lists(st.tuples(st.text(string.ascii_lowercase, min_size=1, max_size=12),
                                    st.integers(0, 200)), max_size=14))
    endless = draw(st.integers(0, 3000)) if draw(st.booleans()) else None
    fields = [b"x-%s: %s\r\n" % (name.encode(), b"v" * size) for name, size in lines]
    size = sum(len(f) + 2 for f in fields)  # on_header counts name + value + 4
    # A head also carries its content-length line (a trailer section only the fields): it counts too.
    count = len(fields) + (0 if trailers else 1)
    fits = endless is None and count <= FEW_HEADERS and size <= SMALL_HEAD - 64
    if trailers:
        data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + b"".join(fields)
    else:
        data = b"HTTP/1.1 200 OK\r\n" + b"".join(fields) + b"content-length: 0\r\n"
    if endless is not None:
        data += b"x-endless: " + b"a" * endless  # a line that has not ended (yet)
    else:
        data += b"\r\n"
    return data, fits, trailers


@FAST
@given(case=hostile_heads(), cuts=cut_points)
def test_oversize_heads_and_trailers_end_in_header_section_size_never_unbounded(
        driver: Driver, case: tuple[bytes, bool, bool], cuts: list[int]) -> None:
    data, fits, trailers = case
    session = open_bounded(driver)
    pieces = split_at(data, cuts)
    result = exchange(driver, session, pieces)
    if result.error is not None:
        assert result.error.kind is FailureKind.HEADERS_TOO_LARGE, result.error
        assert result.error.response_started is trailers
        assert not fits
        assert session.transport.aborted and not session.idle
        assert ("trailers" if trailers else "head") in result.error.context
    elif fits:
        assert result.done and result.head is not None and result.head[0] == 200
    else:
        # Still waiting: only while what the parser holds is within the bound plus the last read.
        largest = max((len(p) for p in pieces), default=0)
        # (the status line, framing and chunk before a trailer section are under 100 bytes).
        assert len(data) <= SMALL_HEAD + largest + 100, (len(data), largest)
    close_session(driver, session)


def test_an_endless_header_line_fed_a_byte_at_a_time_stops_at_the_bound(driver: Driver) -> None:
    session = open_bounded(driver)
    conn = session.conn
    conn.send(REQUEST, ATTEMPT, NO_BODY, None, None, False)
    result = Result()
    driver.loop.create_task(attempt(conn, result))
    driver.settle(2)
    conn.data_received(b"HTTP/1.1 200 OK\r\nx-long: ")
    fed = 0
    while not session.transport.aborted and fed < 10 * SMALL_HEAD:
        conn.data_received(b"a")
        fed += 1
    driver.settle()
    assert result.error is not None and result.error.kind is FailureKind.HEADERS_TOO_LARGE
    assert fed <= SMALL_HEAD
    close_session(driver, session)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nbody until close",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
])
def test_framing_or_status_the_sidecar_cannot_relay_is_a_protocol_error(driver: Driver, data: bytes) -> None:
    session = open_conn(driver)
    result = exchange(driver, session, [data])
    assert result.error is not None and result.error.kind is FailureKind.PROTOCOL, result
    assert not result.error.response_started
    assert session.transport.aborted
    close_session(driver, session)


class TlsTransport(FakeTransport):
    """A fake transport the pool made with a TLS handshake (it has an `ssl_object`)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return object() if name == "ssl_object" else super().get_extra_info(name, default)


def tls_alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower().replace('_', ' ')} (_ssl.c:2580)")
    error.reason = reason
    return error


def lose_first_request(driver: Driver, exc: Exception | None, *, tls: bool = True,
                       requests_before: int = 0) -> UpstreamError:
    session = open_conn(driver)
    if tls:
        session.transport = TlsTransport()
        session.conn.connection_made(session.transport)  # type: ignore[arg-type]
    for _ in range(requests_before):
        exchange(driver, session, [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    conn = session.conn
    conn.send(REQUEST, ATTEMPT, NO_BODY, None, None, False)
    result = Result()
    driver.loop.create_task(attempt(conn, result))
    driver.settle(2)
    conn.connection_lost(exc)
    driver.settle()
    assert result.error is not None
    return result.error


def test_a_tls_alert_before_the_first_response_is_a_refused_handshake(driver: Driver) -> None:
    # TLS 1.3: the upstream judges the client certificate after the client's side of the handshake is done.
    error = lose_first_request(driver, tls_alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"))
    assert error.kind is FailureKind.CONNECT_REFUSED and error.kind.before_connect
    assert error.context == ("cluster c: endpoint e: TLS handshake failed: the upstream refused it "
                             "(tlsv13 alert certificate required)")


def test_a_tls_alert_on_a_reused_connection_is_a_reset(driver: Driver) -> None:
    error = lose_first_request(driver, tls_alert("SSLV3_ALERT_BAD_RECORD_MAC"), requests_before=1)
    assert error.kind is FailureKind.RESET and error.stale


def test_a_new_tls_connection_closed_without_an_answer_is_a_reset_with_a_hint(driver: Driver) -> None:
    # asyncio's TLS servers close without sending their alert: the request may have been read, so a reset.
    error = lose_first_request(driver, None)
    assert error.kind is FailureKind.RESET and not error.stale
    assert error.context.endswith("closed before the response on a new TLS connection "
                                  "(does the upstream refuse the client certificate?)")
    plain = lose_first_request(driver, None, tls=False)
    assert plain.context == "cluster c: endpoint e: connection closed before the response"

"""ClientConnection flow control: pauses it causes must be undone when the exchange ends.

A pooled connection left with reading paused would never see its next response; a client connection
left paused by an upstream's full write buffer would never have its next request read. The races that
lead there are timing-dependent through real sockets, so they are driven here with a fake transport.
"""

from __future__ import annotations

import asyncio

from proxy.http.client import NO_BODY, ClientConnection
from proxy.message import RequestHead

ATTEMPT = (b"x-sidecar-attempt", b"1")


def request_head(method: bytes) -> RequestHead:
    return RequestHead(method, "/", b"", "x", b"x", [])


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []
        self.closed = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> None:
        return None


class FakeReader:
    def __init__(self) -> None:
        self.paused = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.paused -= 1


def _connection() -> tuple[ClientConnection, FakeTransport, list[ClientConnection]]:
    loop = asyncio.get_running_loop()
    conn = ClientConnection(loop, "test")
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    idle: list[ClientConnection] = []
    conn.on_idle = idle.append
    return conn, transport, idle


async def test_connection_paused_at_the_end_of_a_response_is_reading_again_when_pooled() -> None:
    conn, transport, idle = _connection()
    conn.send(request_head(b"GET"), ATTEMPT, NO_BODY, None, None, False)
    conn.pause_reading()  # the downstream's buffer filled as the last bytes came in
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    assert not transport.reading
    conn.finish(reusable=True)
    assert idle == [conn]
    assert transport.reading


async def test_body_reader_is_paused_while_the_upstream_cannot_take_more_and_released_after() -> None:
    conn, _, _ = _connection()
    reader = FakeReader()
    conn.send(request_head(b"POST"), ATTEMPT, 10, None, None, False)
    conn.set_body_reader(reader)
    conn.pause_writing()
    assert reader.paused == 1
    conn.resume_writing()
    assert reader.paused == 0
    conn.pause_writing()
    conn.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    conn.finish(reusable=True)
    assert reader.paused == 0  # not left paused by an exchange that is over


async def test_body_reader_attached_while_paused_starts_paused() -> None:
    conn, _, _ = _connection()
    conn.send(request_head(b"POST"), ATTEMPT, 10, None, None, False)
    conn.pause_writing()
    reader = FakeReader()
    conn.set_body_reader(reader)
    assert reader.paused == 1
    conn.detach()
    assert reader.paused == 0

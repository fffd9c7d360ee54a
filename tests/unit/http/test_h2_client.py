"""The upstream HTTP/2 codec's liveness checks (proxy.http.h2_client), on a fake transport and a real loop: a
connection carrying streams that has heard nothing for KEEPALIVE_IDLE sends a PING; a PING unanswered for
ping_timeout closes the connection and fails its streams; any bytes from the peer count as an answer."""

from __future__ import annotations

import asyncio
from typing import cast

from hyperframe.frame import Frame, PingFrame

from proxy.http.h2_client import KEEPALIVE_IDLE, H2ClientConnection
from tests.unit.http.fakes import FakeTransport


def pings(written: bytes) -> list[PingFrame]:
    found = []
    data = written[24:]  # after the client preface
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        if isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            found.append(frame)
        data = data[9 + length:]
    return found


async def opened() -> tuple[H2ClientConnection, FakeTransport]:
    conn = H2ClientConnection(asyncio.get_running_loop(), "cluster c: endpoint e", 65536, 100)
    transport = FakeTransport()
    conn.connection_made(cast(asyncio.Transport, transport))
    conn.ping_timeout = 0.05
    return conn, transport


async def test_a_connection_silent_for_the_idle_time_is_pinged_and_closed_without_an_answer() -> None:
    conn, transport = await opened()
    conn.open_stream()
    conn._last_rx -= KEEPALIVE_IDLE  # nothing heard since
    conn._keepalive_check()
    await asyncio.sleep(0)
    assert len(pings(bytes(transport.written))) == 1
    await asyncio.sleep(0.1)
    assert transport.aborted and conn.closed


async def test_an_answer_keeps_the_connection() -> None:
    conn, transport = await opened()
    conn.open_stream()
    conn.check_alive()
    conn.check_alive()  # one PING out at a time
    await asyncio.sleep(0)
    assert len(pings(bytes(transport.written))) == 1
    conn.data_received(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # the peer's SETTINGS ACK: it is alive
    await asyncio.sleep(0.1)
    assert not transport.aborted and not conn.closed


async def test_a_connection_heard_from_recently_is_not_pinged() -> None:
    conn, transport = await opened()
    conn.open_stream()
    conn._keepalive_check()
    await asyncio.sleep(0)
    assert pings(bytes(transport.written)) == []

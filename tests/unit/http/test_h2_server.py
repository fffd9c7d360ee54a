"""The HTTP/2 codec's pure parts and its refusal of garbage (proxy.http.h2_server), without a socket.

`request_fields` turns an HTTP/2 request's fields into what `accept_head` takes; the connection, fed any
bytes after the preface, answers with frames or a GOAWAY and closes, never raises or logs an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.h2_engine import PREFACE
from proxy.http.h2_server import Http2Connection, request_fields
from proxy.http.request_head import BadRequest
from proxy.http.settings import Http2Settings, ServerSettings
from proxy.local_reply import LocalReply
from proxy.stream import ByteCounter, RequestStream
from tests.unit.http.fakes import ErrorLog, FakeTransport

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_pseudo_fields_become_method_target_and_host() -> None:
    method, target, headers = request_fields([
        (b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"svc:8080"), (b":path", b"/a?b=1"),
        (b"cookie", b"a=1"), (b"x-y", b"z"), (b"cookie", b"b=2")])
    assert (method, target) == (b"POST", b"/a?b=1")
    assert headers == [(b"host", b"svc:8080"), (b"x-y", b"z"), (b"cookie", b"a=1; b=2")]


def test_host_without_authority_is_kept_and_a_different_one_is_refused() -> None:
    assert request_fields([(b":method", b"GET"), (b":path", b"/"), (b"host", b"h")])[2] == [(b"host", b"h")]
    with pytest.raises(BadRequest):
        request_fields([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"), (b"host", b"b")])


def test_connect_targets_its_authority() -> None:
    assert request_fields([(b":method", b"CONNECT"), (b":authority", b"x:443")])[:2] == (b"CONNECT", b"x:443")


class Listener:
    settings = ServerSettings(http2=Http2Settings())
    traffic = ByteCounter()  # counts nothing

    def __init__(self) -> None:
        self.handled: list[RequestStream] = []
        self.refused: list[RequestStream] = []
        self.protections: list[str] = []

    def handle(self, stream: RequestStream) -> Awaitable[None]:
        self.handled.append(stream)
        return asyncio.sleep(0)

    def refuse(self, stream: RequestStream, reply: LocalReply | None) -> None:
        self.refused.append(stream)
        if reply is not None:
            stream.send_local(reply)

    def connection_opened(self, conn: Any) -> None:
        pass

    def connection_closed(self, conn: Any) -> None:
        pass

    def http2_protection(self, reason: str) -> None:
        self.protections.append(reason)


@FAST
@given(garbage=st.binary(min_size=1, max_size=300), split=st.integers(1, 64))
def test_garbage_after_the_preface_never_raises(garbage: bytes, split: int) -> None:
    loop = asyncio.new_event_loop()
    errors = ErrorLog()
    logging.getLogger("proxy").addHandler(errors)
    try:
        conn = Http2Connection(Listener(), loop, b"127.0.0.1", "", b"")  # type: ignore[arg-type]
        transport = FakeTransport()
        conn.connection_made(cast(Any, transport))
        data = PREFACE + garbage
        for i in range(0, len(data), split):
            conn.data_received(data[i:i + split])
        loop.run_until_complete(asyncio.sleep(0))
        conn.connection_lost(None)
        assert transport.written[3] == 0x4  # our SETTINGS first
        assert not errors.records, errors.records
    finally:
        logging.getLogger("proxy").removeHandler(errors)
        loop.close()

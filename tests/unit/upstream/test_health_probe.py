"""One health check's exchange (proxy.upstream.health_probe): an HTTP/1.1 status line's verdict, read by the
probe's protocol from what a server wrote, and gRPC's health messages."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from proxy.upstream.health import _verdict
from proxy.upstream.health_probe import Answer, BadAnswer, grpc_health_request, grpc_health_status


@pytest.mark.parametrize(("line", "failure"), [
    (b"HTTP/1.1 200 OK", None),
    (b"HTTP/1.1 204 No Content", None),
    (b"HTTP/1.0 299", None),
    (b"HTTP/1.1 199 Odd", "status 199"),
    (b"HTTP/1.1 301 Moved", "status 301"),
    (b"HTTP/1.1 503 Service Unavailable", "status 503"),
    (b"HTTP/2 200", "malformed answer (no HTTP/1 status line)"),
    (b"hello", "malformed answer (no HTTP/1 status line)"),
    (b"HTTP/1.1 20 OK", "malformed answer (no HTTP/1 status line)"),
])
def test_2xx_passes_anything_else_fails(line: bytes, failure: str | None) -> None:
    loop = asyncio.new_event_loop()
    try:
        answer = Answer(loop)
        answer.ask(cast(asyncio.WriteTransport, _Sink()), False, b"http", "/healthz", "10.0.0.1:80")
        answer.data_received(line + b"\r\nServer: x\r\n\r\n")
        try:
            verdict = _verdict(answer.status.result())
        except BadAnswer as exc:
            verdict = str(exc)
    finally:
        loop.close()
    assert verdict == failure


class _Sink:
    """A transport that takes what is written (the check's request)."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


def test_grpc_health_messages_are_protobuf_in_grpc_frames() -> None:
    assert grpc_health_request("") == b"\x00\x00\x00\x00\x00"
    assert grpc_health_request("svc.Echo") == b"\x00\x00\x00\x00\x0a\x0a\x08svc.Echo"
    assert grpc_health_status(b"\x00\x00\x00\x00\x02\x08\x01") == 1  # SERVING
    assert grpc_health_status(b"\x00\x00\x00\x00\x02\x08\x02") == 2  # NOT_SERVING
    assert grpc_health_status(b"\x00\x00\x00\x00\x00") == 0  # the default: UNKNOWN
    assert grpc_health_status(b"\x00\x00\x00\x00\x05\x12\x01x\x08\x01") == 1  # an unknown field skipped
    assert grpc_health_status(b"\x01\x00\x00\x00\x02\x08\x01") == -1  # compressed
    assert grpc_health_status(b"\x00\x00\x00\x00\x03\x08\x01") == -1  # cut short
    assert grpc_health_status(b"\x00\x00\x00\x00\x01\x08") == -1

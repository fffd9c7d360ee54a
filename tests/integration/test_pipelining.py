"""HTTP/1.1 pipelining through the sidecar: several requests in one write, answers in request order.

The client is a raw socket (no client library pipelines), responses are parsed with httptools.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket

from tests.integration.raw import RawClient, RawRequest, RawUpstream, outbound_config, response


async def _echo(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    if request.target.startswith(b"/slow"):
        # The first answer is late; the later requests must still be answered after it.
        await asyncio.sleep(0.3)
    body = b"%s %s %s" % (request.method, request.target, hashlib.sha256(request.body).hexdigest().encode())
    writer.write(response(200, body))


THREE = (
    b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n"
    b"POST /two HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello world"
    b"GET /three HTTP/1.1\r\nhost: x\r\n\r\n"
)


def _expected(method: bytes, target: bytes, body: bytes = b"") -> bytes:
    return b"%s %s %s" % (method, target, hashlib.sha256(body).hexdigest().encode())


async def test_three_pipelined_requests_are_answered_in_order(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_echo).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(THREE)
    replies = await client.responses(3)
    assert [r.body for r in replies] == [
        _expected(b"GET", b"/slow"), _expected(b"POST", b"/two", b"hello world"), _expected(b"GET", b"/three")]
    assert all(r.status == 200 for r in replies)
    # The connection is still usable afterwards.
    client.send(b"GET /four HTTP/1.1\r\nhost: x\r\n\r\n")
    (fourth,) = await client.responses(1)
    assert fourth.body == _expected(b"GET", b"/four")
    client.close()
    await upstream.stop()


async def test_slow_first_response_is_not_overtaken_with_a_concurrent_upstream(sidecar) -> None:  # type: ignore[no-untyped-def]
    # Even if the sidecar sent the pipelined requests upstream in parallel (on several connections),
    # the second answer must not be written before the first.
    upstream = await RawUpstream(_echo).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /slow/1 HTTP/1.1\r\nhost: x\r\n\r\nGET /fast/2 HTTP/1.1\r\nhost: x\r\n\r\n")
    replies = await client.responses(2)
    assert [r.body for r in replies] == [_expected(b"GET", b"/slow/1"), _expected(b"GET", b"/fast/2")]
    client.close()
    await upstream.stop()


async def test_a_half_close_with_requests_pending_cancels_them(sidecar) -> None:  # type: ignore[no-untyped-def]
    # TCP cannot tell `shutdown(SHUT_WR)` from a close, and a client that closed must not hold upstream
    # work: like nginx (499) and Envoy, a FIN while requests are pending cancels them and closes.
    seen: list[bytes] = []

    async def record(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        seen.append(request.target)
        await _echo(request, writer)

    upstream = await RawUpstream(record).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(THREE)
    await client.writer.drain()
    await asyncio.sleep(0.1)  # /slow reached the upstream
    sock = client.writer.get_extra_info("socket")
    sock.shutdown(socket.SHUT_WR)
    assert await client.closed()
    assert await client.responses(1, timeout=0.5) == []
    # The requests queued behind /slow never went upstream.
    assert seen == [b"/slow"]
    client.close()
    await upstream.stop()


async def test_many_pipelined_requests_beyond_the_queue_limit(sidecar) -> None:  # type: ignore[no-untyped-def]
    # More than MAX_QUEUED requests in flight: reading pauses and resumes, none is lost or reordered.
    upstream = await RawUpstream(_echo).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    count = 100
    client.send(b"".join(b"GET /r/%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(count)))
    replies = await client.responses(count, timeout=5)
    assert [r.body for r in replies] == [_expected(b"GET", b"/r/%d" % i) for i in range(count)]
    client.close()
    await upstream.stop()


async def test_pipelined_requests_split_at_every_byte(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_echo).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    data = THREE.replace(b"/slow", b"/one")
    for i in range(len(data)):
        client.send(data[i:i + 1])
        await client.writer.drain()
        if i % 16 == 0:
            await asyncio.sleep(0)
    replies = await client.responses(3)
    assert [r.body for r in replies] == [
        _expected(b"GET", b"/one"), _expected(b"POST", b"/two", b"hello world"), _expected(b"GET", b"/three")]
    client.close()
    await upstream.stop()


async def test_pipelined_error_answers_earlier_requests_first(sidecar) -> None:  # type: ignore[no-untyped-def]
    # A malformed request after a good one: the good one is answered, then the 400, then close.
    upstream = await RawUpstream(_echo).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET /bad HTTP/1.1\r\nhost: x\r\ncontent-length: x\r\n\r\n")
    replies = await client.responses(2)
    assert [r.status for r in replies] == [200, 400]
    assert await client.closed()
    assert [r.target for r in upstream.requests] == [b"/slow"]
    client.close()
    await upstream.stop()

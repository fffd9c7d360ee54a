"""HTTP/1.1 intermediary semantics through real sockets: bodies and framing, Expect, HEAD/1xx/204/304,
hop-by-hop stripping, forwarding and request-id headers, trace propagation, upstream failures, timers and
limits. Clients are aiohttp, http.client (in a thread: the sidecar runs on the test's loop), curl and raw
sockets; upstreams are aiohttp or raw asyncio servers.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.integration.raw import RawClient, RawRequest, RawUpstream, outbound_config, response
from tests.integration.upstreams import start_upstream

UUID4 = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SIZES = [0, 1, 64 * 1024, 5 * 1024 * 1024]


def _payload(size: int) -> bytes:
    # Not all one byte value: a shifted or dropped chunk changes the hash.
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _hash_handler(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.json_response({"sha": _sha(body), "size": len(body),
                              "te": request.headers.get("transfer-encoding"),
                              "cl": request.headers.get("content-length")})


# -- request bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_content_length_request_body_arrives_intact(sidecar, size: int) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream(_hash_handler)
    running = await sidecar(outbound_config(upstream.address))
    data = _payload(size)
    async with aiohttp.ClientSession() as session, session.post(running.url("/up"), data=data) as reply:
        assert reply.status == 200
        seen = await reply.json()
    assert seen["sha"] == _sha(data)
    assert seen["size"] == size
    await upstream.stop()


async def _chunks(data: bytes, size: int = 10_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.parametrize("size", SIZES)
async def test_chunked_request_body_arrives_intact(sidecar, size: int) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream(_hash_handler)
    running = await sidecar(outbound_config(upstream.address))
    data = _payload(size)
    async with aiohttp.ClientSession() as session, session.post(running.url("/up"), data=_chunks(data)) as reply:
        assert reply.status == 200
        seen = await reply.json()
    assert seen["sha"] == _sha(data)
    assert seen["te"] == "chunked"
    await upstream.stop()


# -- response framing ----------------------------------------------------------------------------------


async def _framed_response(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    """/{cl|chunked|close}/{size}: the body in the named framing (close = HTTP/1.0 without a length)."""
    _, framing, size_text = request.target.decode().split("/")
    body = _payload(int(size_text))
    if framing == "cl":
        writer.write(response(200, body))
    elif framing == "chunked":
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 70_000):
            piece = body[start:start + 70_000]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
    else:
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n" + body)
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("framing", ["cl", "chunked", "close"])
@pytest.mark.parametrize("size", SIZES)
async def test_response_bodies_arrive_intact_to_http11_client(sidecar, framing: str, size: int) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_framed_response).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    for _ in range(2):  # twice on one connection: the framing left the stream in step
        client.send(b"GET /%s/%d HTTP/1.1\r\nhost: x\r\n\r\n" % (framing.encode(), size))
        (reply,) = await client.responses(1, timeout=5)
        assert reply.status == 200
        assert _sha(reply.body) == _sha(_payload(size))
        if framing == "cl":
            assert reply.header(b"content-length") == b"%d" % size
        else:
            # Length unknown to the sidecar: chunked towards an HTTP/1.1 client.
            assert reply.header(b"transfer-encoding") == b"chunked"
    client.close()
    await upstream.stop()


@pytest.mark.parametrize("framing", ["cl", "chunked", "close"])
@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 5 * 1024 * 1024])
async def test_response_bodies_arrive_intact_to_http10_client(sidecar, framing: str, size: int) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_framed_response).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /%s/%d HTTP/1.0\r\nhost: x\r\n\r\n" % (framing.encode(), size))
    (reply,) = await client.responses(1, timeout=5)
    assert reply.status == 200
    assert reply.http_version == "1.1"
    assert reply.header(b"transfer-encoding") is None  # an HTTP/1.0 client cannot read chunked
    assert _sha(reply.body) == _sha(_payload(size))
    assert await client.closed()  # no keep-alive was asked for
    client.close()
    await upstream.stop()


async def test_http10_keep_alive_client_with_known_length(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_framed_response).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    for _ in range(2):
        client.send(b"GET /cl/10 HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
        (reply,) = await client.responses(1)
        assert reply.body == _payload(10)
        assert (reply.header(b"connection") or b"").lower() == b"keep-alive"
    client.close()
    await upstream.stop()


# -- Expect: 100-continue ------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "explicit"), [(2048, True), (2 * 1024 * 1024, False)])
async def test_expect_100_continue_with_curl(sidecar, tmp_path: Path, size: int, explicit: bool) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream(_hash_handler)
    running = await sidecar(outbound_config(upstream.address))
    data = _payload(size)
    body_file = tmp_path / "body"
    body_file.write_bytes(data)
    # curl 7.88 sends Expect by itself only above 1 MiB; below, the header is asked for explicitly.
    extra = ["-H", "Expect: 100-continue"] if explicit else []
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sv", "--max-time", "5", "--expect100-timeout", "4", *extra,
        "--data-binary", f"@{body_file}", running.url("/expect"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    trace = err.decode()
    assert "> Expect: 100-continue" in trace
    assert "< HTTP/1.1 100 Continue" in trace
    assert b'"sha": "%s"' % _sha(data).encode() in out
    assert "expect" not in upstream.requests[0].headers
    await upstream.stop()


async def test_expect_100_continue_raw_client_waits_for_continue(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(lambda r, w: _answer_body_hash(r, w)).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
    async with asyncio.timeout(2):
        line = await client.reader.readuntil(b"\r\n\r\n")
    assert line == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"hello")
    (reply,) = await client.responses(1)
    assert reply.body == _sha(b"hello").encode()
    assert b"expect" not in upstream.requests[0].names()
    client.close()
    await upstream.stop()


async def _answer_body_hash(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, _sha(request.body).encode()))


# -- HEAD, 204, 304, 1xx -------------------------------------------------------------------------------


async def _special_status(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    target = request.target
    if request.method == b"HEAD":
        # A HEAD answer announces the GET's length and carries no body.
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ncontent-type: text/plain\r\n\r\n")
    elif target == b"/204":
        writer.write(b"HTTP/1.1 204 No Content\r\nx-kind: none\r\n\r\n")
    elif target == b"/304":
        writer.write(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 99\r\n\r\n")
    elif target == b"/head-chunked" or (request.method == b"HEAD" and target == b"/hc"):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    elif target == b"/103":
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(response(200, b"after hints"))
    elif target == b"/100":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, b"after continue"))
    else:
        writer.write(response(200, b"plain " + target))


def _special_sequence(port: int) -> list[tuple[int, dict[str, str], bytes]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    out = []
    try:
        for method, path in [("HEAD", "/h"), ("GET", "/a"), ("GET", "/204"), ("GET", "/b"), ("GET", "/304"),
                             ("GET", "/c"), ("GET", "/103"), ("GET", "/100"), ("HEAD", "/h2"), ("GET", "/d")]:
            conn.request(method, path)
            reply = conn.getresponse()
            out.append((reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()))
    finally:
        conn.close()
    return out


async def test_head_204_304_and_1xx_keep_the_connection_in_step(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_special_status).start()
    running = await sidecar(outbound_config(upstream.address))
    results = await asyncio.to_thread(_special_sequence, running.port())
    statuses = [status for status, _, _ in results]
    assert statuses == [200, 200, 204, 200, 304, 200, 200, 200, 200, 200]
    head, after_head, no_content, _, not_modified, _, hinted, continued, _, last = results
    assert head[1]["content-length"] == "1234"
    assert head[2] == b""
    assert after_head[2] == b"plain /a"
    assert "content-length" not in no_content[1] and "transfer-encoding" not in no_content[1]
    assert no_content[1]["x-kind"] == "none"
    assert not_modified[1]["etag"] == '"v1"'
    assert "transfer-encoding" not in not_modified[1]
    assert hinted[2] == b"after hints"
    assert continued[2] == b"after continue"
    assert last[2] == b"plain /d"
    # One client connection, one upstream connection: every framing left both streams in step.
    assert upstream.connections == 1
    await upstream.stop()


async def test_head_with_aiohttp(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address))
    async with aiohttp.ClientSession() as session:
        async with session.head(running.url("/x")) as reply:
            assert reply.status == 200
            assert int(reply.headers["content-length"]) > 0
            assert await reply.read() == b""
        async with session.get(running.url("/y")) as reply:
            assert (await reply.json())["path"] == "/y"
    await upstream.stop()


# -- hop-by-hop headers --------------------------------------------------------------------------------


async def _hop_response(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nconnection: x-secret, keep-alive\r\nx-secret: s\r\nkeep-alive: timeout=5\r\n"
        b"proxy-authenticate: Basic\r\nproxy-connection: keep-alive\r\ntrailer: x-t\r\nupgrade: h2c\r\n"
        b"x-end-to-end: kept\r\ncontent-length: 2\r\n\r\nok")


REQUEST_HOP = (
    b"GET /hop HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, x-hop, te\r\nx-hop: 1\r\nkeep-alive: 300\r\n"
    b"te: trailers\r\ntrailer: x-t\r\nproxy-authorization: Basic Zm9vOmJhcg==\r\nproxy-connection: keep-alive\r\n"
    b"x-end-to-end: kept\r\n\r\n"
)
# `te: trailers` and the `Trailer` header that announces trailer fields are end to end (CONTRACT.md): any
# other TE is hop-by-hop.
HOP_NAMES = {b"connection", b"x-hop", b"keep-alive", b"proxy-authorization",
             b"proxy-connection", b"upgrade", b"http2-settings", b"transfer-encoding"}


async def test_hop_by_hop_request_headers_never_reach_the_upstream(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_hop_response).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(REQUEST_HOP)
    (reply,) = await client.responses(1)
    assert reply.status == 200
    seen = upstream.requests[0]
    assert not seen.names() & HOP_NAMES
    assert seen.header(b"x-end-to-end") == b"kept"
    assert seen.header(b"te") == b"trailers" and seen.header(b"trailer") == b"x-t"
    # Any other TE value is hop-by-hop.
    client.send(b"GET /hop HTTP/1.1\r\nhost: x\r\nconnection: te\r\nte: gzip\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 200 and upstream.requests[1].header(b"te") is None
    client.close()
    await upstream.stop()


async def test_hop_by_hop_response_headers_never_reach_the_client(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_hop_response).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /r HTTP/1.1\r\nhost: x\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.body == b"ok"
    assert not reply.names() & {b"connection", b"x-secret", b"keep-alive", b"proxy-authenticate",
                                b"proxy-connection", b"upgrade"}
    assert reply.header(b"x-end-to-end") == b"kept"
    assert reply.header(b"trailer") == b"x-t"  # announces trailer fields, which are forwarded
    client.close()
    await upstream.stop()


async def test_h2c_upgrade_is_dropped_and_served_as_http11(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /h2c HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
                b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 200
    assert reply.body == b"ok:/h2c"
    assert not upstream.requests[0].names() & HOP_NAMES
    # Still an HTTP/1.1 connection: a second request works.
    client.send(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n")
    (second,) = await client.responses(1)
    assert second.body == b"ok:/after"
    client.close()
    await upstream.stop()


async def test_h2c_upgrade_with_body_is_served_as_http11(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_answer_body_hash).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"POST /h2c HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
                b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\ncontent-length: 5\r\n\r\nhello"
                b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n")
    replies = await client.responses(2)
    assert [r.status for r in replies] == [200, 200]
    assert replies[0].body == _sha(b"hello").encode()
    assert [r.body for r in upstream.requests] == [b"hello", b""]
    client.close()
    await upstream.stop()


# -- forwarding headers and request id -------------------------------------------------------------------


async def test_forwarded_headers_and_request_id(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address))
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url("/f"), headers={"x-forwarded-for": "10.1.2.3",
                                                           "x-forwarded-proto": "https"}) as reply:
            data = await reply.json()
            returned = reply.headers["x-request-id"].encode()
        async with session.get(running.url("/g"), headers={"x-request-id": "my-id-1"}) as reply:
            kept = await reply.json()
            assert reply.headers["x-request-id"] == "my-id-1"
    assert data["headers"]["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert data["headers"]["x-forwarded-proto"] == "https"
    assert UUID4.match(returned), returned
    assert data["headers"]["x-request-id"] == returned.decode()
    assert kept["headers"]["x-request-id"] == "my-id-1"
    assert kept["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert kept["headers"]["x-forwarded-proto"] == "http"
    await upstream.stop()


async def test_every_request_gets_its_own_request_id(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost: x\r\n\r\n")
    replies = await client.responses(2)
    ids = [r.header(b"x-request-id") for r in replies]
    assert ids[0] != ids[1]
    assert [r.header(b"x-request-id") for r in upstream.requests] == ids
    assert all(i is not None and UUID4.match(i) for i in ids)
    client.close()
    await upstream.stop()


# -- trace propagation ---------------------------------------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


async def test_traceparent_keeps_trace_id_with_new_parent(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address))
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url("/t"), headers={"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01",
                                                           "tracestate": "k=v"}) as reply:
            headers = (await reply.json())["headers"]
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id != SPAN_ID and re.fullmatch("[0-9a-f]{16}", span_id)
    assert headers["tracestate"] == "k=v"
    assert "b3" not in headers
    await upstream.stop()


async def test_b3_injected_when_configured(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address, top_extra="tracing: {propagation: [w3c, b3]}"))
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url("/t"), headers={"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"}) as reply:
            headers = (await reply.json())["headers"]
        async with session.get(running.url("/t"), headers={"b3": f"{TRACE_ID}-{SPAN_ID}-0"}) as reply:
            from_b3 = (await reply.json())["headers"]
    span_id = headers["traceparent"].split("-")[2]
    assert headers["b3"] == f"{TRACE_ID}-{span_id}-1-{SPAN_ID}"
    new_span = from_b3["traceparent"].split("-")[2]
    assert from_b3["traceparent"] == f"00-{TRACE_ID}-{new_span}-00"
    assert from_b3["b3"] == f"{TRACE_ID}-{new_span}-0-{SPAN_ID}"
    await upstream.stop()


# -- upstream failures ---------------------------------------------------------------------------------


async def test_connect_refused_is_503_with_proxy_status(sidecar) -> None:  # type: ignore[no-untyped-def]
    running = await sidecar(outbound_config(f"127.0.0.1:{free_port()}"))
    async with aiohttp.ClientSession() as session, session.get(running.url("/x")) as reply:
        assert reply.status == 503
        assert reply.headers["proxy-status"].startswith("sidecar; error=connection_refused; details=")
        assert "x-request-id" in reply.headers


async def _truncated(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    if request.target == b"/chunked":
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()


@pytest.mark.parametrize("path", ["/cl", "/chunked"])
async def test_upstream_closing_mid_response_breaks_the_client_response(sidecar, path: str) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_truncated).start()
    running = await sidecar(outbound_config(upstream.address))
    async with aiohttp.ClientSession() as session, session.get(running.url(path)) as reply:
        assert reply.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await reply.read()
    # The sidecar is fine afterwards: a new request on a new connection gets an answer.
    async with aiohttp.ClientSession() as session, session.get(running.url("/cl")) as reply:
        assert reply.status == 200
    await upstream.stop()


async def _garbage(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(b"this is not HTTP at all\r\n\r\n")


async def test_upstream_garbage_is_502_protocol_error(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_garbage).start()
    running = await sidecar(outbound_config(upstream.address))
    async with aiohttp.ClientSession() as session, session.get(running.url("/x")) as reply:
        assert reply.status == 502
        assert reply.headers["proxy-status"].startswith("sidecar; error=http_protocol_error;")
    await upstream.stop()


async def test_upstream_closing_before_any_response_is_502(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def close_at_once(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.close()

    upstream = await RawUpstream(close_at_once).start()
    running = await sidecar(outbound_config(upstream.address))
    async with aiohttp.ClientSession() as session, session.get(running.url("/x")) as reply:
        assert reply.status == 502
        assert reply.headers["proxy-status"].startswith("sidecar; error=http_response_incomplete;")
    await upstream.stop()


async def _slow(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    if request.target == b"/slow-body":
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
    await asyncio.sleep(2)
    writer.write(response(200, b"late"))


async def test_route_timeout_is_504_on_time(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_slow).start()
    running = await sidecar(outbound_config(upstream.address, route_extra="timeout: 200ms"))
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.get(running.url("/slow")) as reply:
            elapsed = time.monotonic() - started
            assert reply.status == 504
            assert reply.headers["proxy-status"].startswith("sidecar; error=http_response_timeout;")
        assert 0.19 <= elapsed <= 0.5
        # Once the response has started, expiry resets the client connection instead.
        async with session.get(running.url("/slow-body")) as reply:
            assert reply.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await reply.read()
    await upstream.stop()


# -- downstream timers ---------------------------------------------------------------------------------


async def test_header_read_timeout_408_while_others_are_served(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(outbound_config(upstream.address, listener_extra="http: {header_read_timeout: 300ms}"))
    stalled = await RawClient.connect(running.port())
    started = time.monotonic()
    stalled.send(b"GET /stalled HTTP/1.1\r\nhost: x\r\nx-partial: ")
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(running.url("/meanwhile")) as reply:
                assert reply.status == 200
    assert time.monotonic() - started < 0.3
    (reply,) = await stalled.responses(1)
    elapsed = time.monotonic() - started
    assert reply.status == 408
    assert b"error=http_request_error" in (reply.header(b"proxy-status") or b"")
    assert 0.25 <= elapsed <= 1.0
    assert await stalled.closed()
    assert [r.path for r in upstream.requests] == ["/meanwhile"] * 3
    stalled.close()
    await upstream.stop()


async def test_header_read_timeout_does_not_cover_the_idle_gap(sidecar) -> None:  # type: ignore[no-untyped-def]
    # Time between requests is idle_timeout's, not header_read_timeout's.
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address, listener_extra="http: {header_read_timeout: 200ms}"))
    client = await RawClient.connect(running.port())
    client.send(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await client.responses(1))[0].status == 200
    await asyncio.sleep(0.5)
    client.send(b"GET /2 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await client.responses(1))[0].status == 200
    client.close()
    await upstream.stop()


async def test_idle_keep_alive_connection_is_closed_after_idle_timeout(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address, listener_extra="http: {idle_timeout: 300ms}"))
    client = await RawClient.connect(running.port())
    client.send(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await client.responses(1))[0].status == 200
    started = time.monotonic()
    assert await client.closed(timeout=2)
    assert 0.2 <= time.monotonic() - started <= 1.0
    client.close()
    # A connection that never sent anything is closed after idle_timeout too.
    silent = await RawClient.connect(running.port())
    assert await silent.closed(timeout=2)
    silent.close()
    await upstream.stop()


# -- limits --------------------------------------------------------------------------------------------


async def test_oversize_head_is_431(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address,
                                            listener_extra="http: {max_request_headers: 1KiB, max_headers: 10}"))
    client = await RawClient.connect(running.port())
    client.send(b"GET /big HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 2000 + b"\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 431
    assert b"error=http_request_error" in (reply.header(b"proxy-status") or b"")
    assert await client.closed()
    client = await RawClient.connect(running.port())
    client.send(b"GET /many HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(20)) + b"\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 431
    client = await RawClient.connect(running.port())
    client.send(b"GET /" + b"u" * 2000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 431
    # Just under the limits is fine.
    client = await RawClient.connect(running.port())
    client.send(b"GET /ok HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 500 + b"\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 200
    assert upstream.requests[0].target == b"/ok"
    await upstream.stop()


async def test_endless_header_value_is_refused_promptly(sidecar) -> None:  # type: ignore[no-untyped-def]
    # A header line that never ends must not be buffered without bound until header_read_timeout.
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address, listener_extra="http: {max_request_headers: 1KiB}"))
    client = await RawClient.connect(running.port())
    client.send(b"GET / HTTP/1.1\r\nhost: x\r\nx-endless: ")
    try:
        for _ in range(64):
            client.send(b"v" * 16384)
            await client.writer.drain()
    except ConnectionError:
        pass
    (reply,) = await client.responses(1, timeout=2)
    assert reply.status == 431
    client.close()
    await upstream.stop()


async def test_default_head_limit_is_60kib(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 431
    client.close()
    await upstream.stop()


async def test_request_body_over_max_request_body_is_413(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_answer_body_hash).start()
    running = await sidecar(outbound_config(upstream.address, listener_extra="http: {max_request_body: 1KiB}"))
    client = await RawClient.connect(running.port())
    client.send(b"POST /cl HTTP/1.1\r\nhost: x\r\ncontent-length: 2048\r\n\r\n" + b"a" * 2048)
    (reply,) = await client.responses(1)
    assert reply.status == 413
    assert b"error=http_request_error" in (reply.header(b"proxy-status") or b"")
    assert await client.closed()
    client = await RawClient.connect(running.port())
    client.send(b"POST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                + b"400\r\n" + b"a" * 1024 + b"\r\n" + b"10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n")
    (reply,) = await client.responses(1)
    assert reply.status == 413
    assert await client.closed()
    # Exactly at the limit passes.
    client = await RawClient.connect(running.port())
    client.send(b"POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: 1024\r\n\r\n" + b"a" * 1024)
    (reply,) = await client.responses(1)
    assert reply.status == 200
    assert reply.body == _sha(b"a" * 1024).encode()
    assert [r.target for r in upstream.requests] == [b"/ok"]
    client.close()
    await upstream.stop()


async def test_upstream_echoed_request_id_is_not_duplicated(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def echo_id(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, b"ok", [(b"X-Request-Id", request.header(b"x-request-id") or b"")]))

    upstream = await RawUpstream(echo_id).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET / HTTP/1.1\r\nhost: x\r\nx-request-id: abc\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
    replies = await client.responses(2)
    for reply in replies:
        assert [v for n, v in reply.headers if n == b"x-request-id"] == [reply.header(b"x-request-id")]
    assert replies[0].header(b"x-request-id") == b"abc"
    client.close()
    await upstream.stop()

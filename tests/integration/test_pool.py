"""Upstream keep-alive pooling through real sockets: reuse, and the stale-connection re-send rule.

CONTRACT.md: "A request on a reused pooled connection that the upstream had already closed (no byte of
response) is sent again once on a new connection when its method is idempotent". The upstreams here are
raw asyncio servers so the tests can count TCP connections and close them at chosen moments.
"""

from __future__ import annotations

import asyncio
import http.client

from tests.integration.raw import RawClient, RawRequest, RawUpstream, outbound_config, response


def _get_many(port: int, count: int) -> list[tuple[int, bytes]]:
    """`count` GETs on one http.client connection (blocking: run in a thread)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    results = []
    try:
        for i in range(count):
            conn.request("GET", f"/n/{i}")
            reply = conn.getresponse()
            results.append((reply.status, reply.read()))
    finally:
        conn.close()
    return results


async def test_keep_alive_client_reuses_one_upstream_connection(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address))
    results = await asyncio.to_thread(_get_many, running.port(), 20)
    assert results == [(200, b"ok:/n/%d" % i) for i in range(20)]
    assert upstream.connections == 1
    assert [r.index for r in upstream.requests] == list(range(1, 21))
    # One client connection on the sidecar's side too (the gauge would show otherwise).
    await upstream.stop()


async def test_sequential_clients_share_the_pooled_upstream_connection(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address))
    for _ in range(5):
        assert await asyncio.to_thread(_get_many, running.port(), 2) == [(200, b"ok:/n/0"), (200, b"ok:/n/1")]
    assert upstream.connections == 1
    await upstream.stop()


async def _close_after_responding(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    # Keep-alive by HTTP/1.1 default (no Connection: close), then the socket is closed anyway: the pooled
    # connection is dead by the time the next request wants it.
    writer.write(response(200, b"conn %d" % request.connection))
    await writer.drain()
    writer.close()


async def test_upstream_closing_idle_connections_does_not_fail_requests(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_close_after_responding).start()
    running = await sidecar(outbound_config(upstream.address))
    results = await asyncio.to_thread(_get_many, running.port(), 5)
    assert [status for status, _ in results] == [200] * 5
    assert upstream.connections == 5
    await upstream.stop()


async def _drop_second_request(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    # The deterministic form of the idle-close race: the request reached a connection the upstream is
    # closing, and not one byte of response comes back.
    if request.index >= 2:
        writer.close()
        return
    writer.write(response(200, b"%s on conn %d" % (request.method, request.connection)))


async def test_stale_pooled_connection_resends_idempotent_request_once(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_drop_second_request).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
    (first,) = await client.responses(1)
    assert first.body == b"GET on conn 1"
    client.send(b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n")
    (second,) = await client.responses(1)
    assert second.status == 200
    assert second.body == b"GET on conn 2"
    assert [(r.target, r.connection) for r in upstream.requests] == [(b"/a", 1), (b"/b", 1), (b"/b", 2)]
    client.close()
    await upstream.stop()


async def test_stale_pooled_connection_does_not_resend_post(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_drop_second_request).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    client.send(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
    (first,) = await client.responses(1)
    assert first.status == 200
    client.send(b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
    (second,) = await client.responses(1)
    # Not re-sent: the upstream may have acted on it. The client gets the failure instead.
    assert second.status == 502
    assert b"error=http_response_incomplete" in (second.header(b"proxy-status") or b"")
    assert [(r.method, r.connection) for r in upstream.requests] == [(b"GET", 1), (b"POST", 1)]
    client.close()
    await upstream.stop()


async def test_stale_post_with_close_race_is_not_resent(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(_close_after_responding).start()
    running = await sidecar(outbound_config(upstream.address))
    client = await RawClient.connect(running.port())
    for _ in range(3):
        client.send(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        (reply,) = await client.responses(1)
        assert reply.status in (200, 502)
    # Every POST reached the upstream exactly once.
    assert len(upstream.requests) == 3
    client.close()
    await upstream.stop()


async def test_pool_recovers_after_upstream_restart(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(outbound_config(upstream.address))
    assert await asyncio.to_thread(_get_many, running.port(), 1) == [(200, b"ok:/n/0")]
    await upstream.stop()
    restarted = RawUpstream()
    restarted.server = await asyncio.start_server(restarted._serve, "127.0.0.1", upstream.port)
    assert await asyncio.to_thread(_get_many, running.port(), 2) == [(200, b"ok:/n/0"), (200, b"ok:/n/1")]
    assert restarted.connections == 1
    await restarted.stop()


def _pool_config(upstream: str, pool: str) -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes: [{{name: all, match: {{prefix: /}}, cluster: backend}}]
    clusters:
      - name: backend
        endpoints: ["{upstream}"]
        pool: {pool}
    """


async def test_max_requests_per_connection_rotates_upstream_connections(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(_pool_config(upstream.address, "{max_requests_per_connection: 3}"))
    results = await asyncio.to_thread(_get_many, running.port(), 9)
    assert [status for status, _ in results] == [200] * 9
    assert upstream.connections == 3  # 3 requests each, then a fresh connection
    assert [r.index for r in upstream.requests] == [1, 2, 3] * 3
    await upstream.stop()


async def test_idle_upstream_connections_close_after_pool_idle_timeout(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream().start()
    running = await sidecar(_pool_config(upstream.address, "{idle_timeout: 200ms}"))
    await asyncio.to_thread(_get_many, running.port(), 1)
    pool = running.app.clusters["backend"].endpoints[0].pool
    assert pool.idle_count == 1
    await asyncio.sleep(0.6)
    assert pool.idle_count == 0
    await asyncio.to_thread(_get_many, running.port(), 1)
    assert upstream.connections == 2  # the idle one was closed, so a new one was opened
    await upstream.stop()


async def test_max_idle_per_endpoint_bounds_the_pool(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def slow(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)  # keeps the 5 requests concurrent: 5 upstream connections
        writer.write(response(200, b"ok"))

    upstream = await RawUpstream(slow).start()
    running = await sidecar(_pool_config(upstream.address, "{max_idle_per_endpoint: 2}"))
    # 5 concurrent clients need 5 upstream connections; only 2 may stay idle afterwards.
    await asyncio.gather(*(asyncio.to_thread(_get_many, running.port(), 1) for _ in range(5)))
    pool = running.app.clusters["backend"].endpoints[0].pool
    assert upstream.connections == 5
    assert pool.idle_count == 2
    await upstream.stop()

"""The per-endpoint circuit breaker end to end (gobreaker semantics, CONTRACT.md "Semantics users rely on").

Closed counts requests and failures; it trips at `min_requests` with `failure_ratio`; open fails fast with
503 `destination_unavailable` without reaching the upstream; after `open_timeout` half-open admits at most
`half_open_requests` trials, closes after that many successes and re-opens on any failure. A client that
goes away is not a failure. The balancer routes around an open endpoint. Metrics and /clusters show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Any

import aiohttp

from tests.integration.admin_client import endpoint_view, metric
from tests.integration.raw import RawClient, RawRequest, RawUpstream, outbound_config, response

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)
BREAKER = "{min_requests: 3, failure_ratio: 0.6, interval: 10s, open_timeout: 500ms, half_open_requests: 2}"


def config(endpoints: list[str], breaker: str = BREAKER, route_extra: str = "") -> str:
    return outbound_config(endpoints, route_extra=route_extra, cluster_extra=f"circuit_breaker: {breaker}")


class Controlled:
    """A raw upstream handler whose answer the test changes as it goes; it counts hits and concurrency."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.delay = 0.0
        self.hang = False
        self.release = asyncio.Event()
        self.hits = 0
        self.active = 0
        self.peak = 0

    async def __call__(self, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.hang:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 5)
            elif self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        writer.write(response(self.status, b"from upstream"))


async def fetch(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, session.get(url, **kwargs) as reply:
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, await reply.read()





def reset(client: RawClient) -> None:
    """Abort the client's connection with a TCP RST (a FIN alone is a half-close the sidecar waits out)."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


def is_unavailable(status: int, headers: dict[str, str]) -> bool:
    return status == 503 and "error=destination_unavailable" in headers.get("proxy-status", "")


async def trip(running: Any, upstream: Controlled) -> None:
    """Three failures in a row: requests 3 >= min_requests and ratio 1.0 >= 0.6."""
    upstream.status = 503
    for _ in range(3):
        status, headers, body = await fetch(running.url("/x"))
        assert (status, body) == (503, b"from upstream")
        assert "proxy-status" not in headers


async def test_breaker_trips_fails_fast_then_half_opens_and_closes(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Controlled()
    server = await RawUpstream(upstream).start()
    running = await sidecar(config([server.address]))
    await trip(running, upstream)

    # Open: answered at once, the upstream is not reached.
    for _ in range(5):
        started = time.monotonic()
        status, headers, _ = await fetch(running.url("/x"))
        assert is_unavailable(status, headers)
        assert time.monotonic() - started < 0.2
    assert upstream.hits == 3
    assert await metric(running, "sidecar_circuit_breaker_state", endpoint=server.address) == 1
    assert await metric(running, "sidecar_circuit_breaker_transitions_total", to="open") == 1
    assert await metric(running, "sidecar_endpoints", state="breaker_open") == 1
    assert (await endpoint_view(running, server.address))["breaker"] == "open"

    # After open_timeout: half-open admits two concurrent trials, no more.
    await asyncio.sleep(0.55)
    upstream.status = 200
    upstream.delay = 0.3
    upstream.peak = 0
    results = await asyncio.gather(*(fetch(running.url(f"/{i}")) for i in range(5)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if is_unavailable(r[0], r[1])]
    assert (len(ok), len(refused)) == (2, 3)
    assert upstream.peak == 2
    assert upstream.hits == 5

    # Two successes closed it.
    assert await metric(running, "sidecar_circuit_breaker_state", endpoint=server.address) == 0
    assert await metric(running, "sidecar_circuit_breaker_transitions_total", to="half_open") == 1
    assert await metric(running, "sidecar_circuit_breaker_transitions_total", to="closed") == 1
    assert (await endpoint_view(running, server.address))["breaker"] == "closed"
    upstream.delay = 0.0
    statuses = [(await fetch(running.url("/x")))[0] for _ in range(4)]
    assert statuses == [200] * 4
    await server.stop()


async def test_a_failure_in_half_open_reopens(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Controlled()
    server = await RawUpstream(upstream).start()
    running = await sidecar(config([server.address]))
    await trip(running, upstream)
    await asyncio.sleep(0.55)
    # The trial reaches the upstream and fails ...
    status, headers, _ = await fetch(running.url("/x"))
    assert (status, "proxy-status" in headers) == (503, False)
    assert upstream.hits == 4
    # ... so the breaker is open again: failing fast, for another open_timeout.
    status, headers, _ = await fetch(running.url("/x"))
    assert is_unavailable(status, headers)
    assert upstream.hits == 4
    assert await metric(running, "sidecar_circuit_breaker_transitions_total", to="open") == 2
    assert await metric(running, "sidecar_circuit_breaker_state", endpoint=server.address) == 1
    await asyncio.sleep(0.55)
    upstream.status = 200
    for _ in range(3):
        assert (await fetch(running.url("/x")))[0] == 200
    assert await metric(running, "sidecar_circuit_breaker_state", endpoint=server.address) == 0
    await server.stop()


async def test_balancer_routes_around_an_open_endpoint(sidecar) -> None:  # type: ignore[no-untyped-def]
    bad, good = Controlled(503), Controlled(200)
    bad_server = await RawUpstream(bad).start()
    good_server = await RawUpstream(good).start()
    running = await sidecar(config([bad_server.address, good_server.address]))
    # Round robin alternates until the failing endpoint has failed three times.
    for _ in range(6):
        await fetch(running.url("/x"))
    assert bad.hits == 3
    statuses = [(await fetch(running.url("/x")))[0] for _ in range(10)]
    assert statuses == [200] * 10
    assert bad.hits == 3
    assert await metric(running, "sidecar_endpoints", state="breaker_open") == 1
    assert await metric(running, "sidecar_endpoints", state="healthy") == 1
    assert (await endpoint_view(running, bad_server.address))["health"] == "breaker_open"
    await bad_server.stop()
    await good_server.stop()


async def test_client_cancellations_are_not_failures(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Controlled(200)
    upstream.hang = True
    server = await RawUpstream(upstream).start()
    running = await sidecar(config([server.address]))
    for n in range(1, 6):
        client = await RawClient.connect(running.port())
        client.send(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
        for _ in range(100):
            if upstream.hits == n:
                break
            await asyncio.sleep(0.01)
        reset(client)  # the client goes away mid-request
        for _ in range(100):
            if (await endpoint_view(running, server.address))["in_flight"] == 0:
                break
            await asyncio.sleep(0.01)
    assert upstream.hits == 5
    view = await endpoint_view(running, server.address)
    assert (view["breaker"], view["failures"], view["in_flight"]) == ("closed", 0, 0)
    assert await metric(running, "sidecar_circuit_breaker_transitions_total", to="open") == 0
    upstream.hang = False
    upstream.release.set()
    assert [(await fetch(running.url("/x")))[0] for _ in range(3)] == [200] * 3
    await server.stop()


async def test_timeouts_and_resets_count_as_failures(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def reset(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # type: ignore[attr-defined]

    server = await RawUpstream(reset).start()
    running = await sidecar(config([server.address]))
    for _ in range(3):
        status, headers, _ = await fetch(running.url("/x"))
        assert status == 502
        assert "error=http_response_incomplete" in headers["proxy-status"]
    status, headers, _ = await fetch(running.url("/x"))
    assert is_unavailable(status, headers)
    assert len(server.requests) == 3
    await server.stop()


async def test_retry_refused_by_an_open_breaker_returns_the_upstream_answer(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Controlled(503)
    server = await RawUpstream(upstream).start()
    running = await sidecar(config(
        [server.address], "{min_requests: 1, failure_ratio: 1.0, open_timeout: 5s}",
        "retries: {attempts: 2, on: [5xx], backoff: {base: 1ms, max: 2ms}}"))
    # The first try fails and opens the only endpoint's breaker: no retry can go anywhere, so the
    # client gets the upstream's answer as it was, not a local reply for a retry that never happened.
    status, headers, body = await fetch(running.url("/x"))
    assert (status, body) == (503, b"from upstream")
    assert "proxy-status" not in headers
    assert upstream.hits == 1
    status, headers, _ = await fetch(running.url("/x"))
    assert is_unavailable(status, headers)
    await server.stop()

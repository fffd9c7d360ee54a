"""Cluster bulkhead (`limits`) and the listener-wide in-flight cap, end to end.

CONTRACT.md: "cluster limits full (bulkhead), or `pending_timeout` expired while waiting for a slot" and
"listener-wide in-flight cap reached" both answer 503 `connection_limit_reached`;
`sidecar_limits_rejected_total{cluster,reason}` counts each such reply once. Concurrency is measured at
the upstream, where it matters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.integration.admin_client import metric
from tests.integration.raw import RawRequest, RawUpstream, outbound_config, response

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)
LIMITS = "{max_requests: 2, max_pending: 1, pending_timeout: 300ms}"


def config(endpoint: str, limits: str = LIMITS, listener_extra: str = "", route_extra: str = "") -> str:
    return outbound_config(endpoint, listener_extra=listener_extra, route_extra=route_extra,
                           cluster_extra=f"limits: {limits}")


class Slow:
    """Answers 200 after `delay` seconds; records the peak number of requests it held at once."""

    def __init__(self, delay: float, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.active = 0
        self.peak = 0
        self.hits = 0

    async def __call__(self, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        writer.write(response(self.status, b"slow"))


async def timed_fetch(url: str) -> tuple[int, dict[str, str], float]:
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, session.get(url) as reply:
        await reply.read()
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, time.monotonic() - started



async def until(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def limit_reached(status: int, headers: dict[str, str]) -> bool:
    return status == 503 and "error=connection_limit_reached" in headers.get("proxy-status", "")


async def test_bulkhead_caps_queues_rejects_and_times_out(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Slow(1.0)
    server = await RawUpstream(upstream).start()
    running = await sidecar(config(server.address))
    admitted = [asyncio.create_task(timed_fetch(running.url(f"/a{i}"))) for i in range(2)]
    await until(lambda: upstream.hits == 2)
    pending = asyncio.create_task(timed_fetch(running.url("/pending")))
    await asyncio.sleep(0.05)  # now waiting for a slot
    # The fourth: both slots busy and the one queue place taken, so it is refused at once.
    status, headers, elapsed = await timed_fetch(running.url("/rejected"))
    assert limit_reached(status, headers)
    assert elapsed < 0.15
    assert "max_pending" in headers["proxy-status"]
    # The pending one gives up after pending_timeout.
    status, headers, elapsed = await pending
    assert limit_reached(status, headers)
    assert 0.25 <= elapsed < 0.6
    assert "pending_timeout" in headers["proxy-status"]
    assert [r[0] for r in await asyncio.gather(*admitted)] == [200, 200]
    assert upstream.peak == 2
    assert upstream.hits == 2
    assert await metric(running, "sidecar_limits_rejected_total", cluster="backend", reason="max_pending") == 1
    assert await metric(running, "sidecar_limits_rejected_total", cluster="backend", reason="pending_timeout") == 1
    assert await metric(running, "sidecar_limits_rejected_total", cluster="backend", reason="max_requests") == 0
    await server.stop()


async def test_pending_request_gets_the_freed_slot(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Slow(0.2)
    server = await RawUpstream(upstream).start()
    running = await sidecar(config(server.address, "{max_requests: 2, max_pending: 10, pending_timeout: 2s}"))
    results = await asyncio.gather(*(timed_fetch(running.url(f"/{i}")) for i in range(6)))
    assert [r[0] for r in results] == [200] * 6
    assert upstream.peak == 2
    # Three waves of two.
    assert 0.55 <= max(r[2] for r in results) < 1.2
    assert await metric(running, "sidecar_limits_rejected_total", cluster="backend") == 0
    await server.stop()


async def test_no_queue_rejects_with_max_requests(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Slow(0.3)
    server = await RawUpstream(upstream).start()
    running = await sidecar(config(server.address, "{max_requests: 1, max_pending: 0}"))
    results = await asyncio.gather(*(timed_fetch(running.url(f"/{i}")) for i in range(4)))
    assert sorted(r[0] for r in results) == [200, 503, 503, 503]
    assert all(limit_reached(s, h) and t < 0.2 for s, h, t in results if s == 503)
    assert upstream.peak == 1
    assert await metric(running, "sidecar_limits_rejected_total", cluster="backend", reason="max_requests") == 3
    await server.stop()


async def test_retries_are_admitted_by_the_bulkhead_too(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Slow(0.1, status=503)
    server = await RawUpstream(upstream).start()
    running = await sidecar(config(
        server.address, "{max_requests: 2, max_pending: 100, pending_timeout: 3s}",
        route_extra="retries: {attempts: 2, on: [5xx], backoff: {base: 1ms, max: 2ms}}"))
    results = await asyncio.gather(*(timed_fetch(running.url(f"/{i}")) for i in range(4)))
    assert [r[0] for r in results] == [503] * 4
    assert upstream.hits == 12
    assert upstream.peak == 2
    await server.stop()


async def test_listener_in_flight_cap(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Slow(0.5)
    server = await RawUpstream(upstream).start()
    running = await sidecar(config(server.address, "{max_requests: 100}",
                                   listener_extra="http: {max_requests_in_flight: 2}"))
    busy = [asyncio.create_task(timed_fetch(running.url(f"/{i}"))) for i in range(2)]
    await until(lambda: upstream.hits == 2)
    status, headers, elapsed = await timed_fetch(running.url("/third"))
    assert limit_reached(status, headers)
    assert 'details="listener limit"' in headers["proxy-status"]
    assert elapsed < 0.15
    assert [r[0] for r in await asyncio.gather(*busy)] == [200, 200]
    # Slots come back when requests finish.
    status, _, _ = await timed_fetch(running.url("/later"))
    assert status == 200
    assert upstream.hits == 3
    await server.stop()

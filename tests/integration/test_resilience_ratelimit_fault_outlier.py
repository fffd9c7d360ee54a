"""Route rate limits, fault injection and outlier detection, end to end.

CONTRACT.md: an empty bucket answers 429 with `Retry-After` and `Proxy-Status: ...; error=http_request_denied`
without reaching the upstream, counted in `sidecar_rate_limited_total`; a fault abort answers the configured
status with `proxy_internal_response`, is not retried and does not count against breakers; an injected delay
is not cut by the route timeout (Istio: no timeouts apply to injected faults; the route deadline starts after
the delay); outlier detection ejects an endpoint with `consecutive_5xx` failures on its timer, for
`base_ejection_time`, never more than `max_ejection_percent` of the endpoints.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.integration.admin_client import endpoint_view, metric
from tests.integration.raw import RawRequest, RawUpstream, outbound_config, response

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)


def config(endpoints: list[str], route_extra: str = "", cluster_extra: str = "") -> str:
    return outbound_config(endpoints, route_extra=route_extra, cluster_extra=cluster_extra)


class Fixed:
    """Answers every request with `status`; counts them."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.hits = 0

    async def __call__(self, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        writer.write(response(self.status, b"from upstream"))


async def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, \
            session.get(url, headers=headers) as reply:
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, await reply.read()




# -- rate limit ------------------------------------------------------------------------------------------


async def test_rate_limit_bucket_empties_and_refills(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Fixed()
    server = await RawUpstream(upstream).start()
    running = await sidecar(config([server.address], "rate_limit: {requests_per_second: 5, burst: 5}"))
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        statuses = []
        for i in range(5):
            async with session.get(running.url(f"/{i}")) as reply:
                statuses.append(reply.status)
        assert statuses == [200] * 5
        async with session.get(running.url("/6")) as reply:
            assert reply.status == 429
            assert reply.headers["Retry-After"] == "1"
            assert "error=http_request_denied" in reply.headers["Proxy-Status"]
            assert 'details="route all: rate limited"' in reply.headers["Proxy-Status"]
        assert upstream.hits == 5
        # One token per 0.2 s.
        await asyncio.sleep(0.25)
        async with session.get(running.url("/7")) as reply:
            assert reply.status == 200
        async with session.get(running.url("/8")) as reply:
            assert reply.status == 429
    assert upstream.hits == 6
    assert await metric(running, "sidecar_rate_limited_total", listener="outbound", route="all") == 2
    assert await metric(running, "sidecar_requests_total", route="all", code="429") == 2
    await server.stop()


async def test_rate_limit_keyed_by_header_gives_each_client_a_bucket(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Fixed()
    server = await RawUpstream(upstream).start()
    running = await sidecar(config(
        [server.address], "rate_limit: {requests_per_second: 1, burst: 2, key: {header: x-client-id}}"))

    async def statuses(client: str | None, count: int) -> list[int]:
        headers = {"x-client-id": client} if client is not None else None
        return [(await fetch(running.url("/"), headers))[0] for _ in range(count)]

    assert await statuses("a", 3) == [200, 200, 429]
    assert await statuses("b", 3) == [200, 200, 429]
    assert await statuses(None, 3) == [200, 200, 429]  # no header: a bucket of its own
    assert await statuses("a", 1) == [429]
    assert upstream.hits == 6
    assert await metric(running, "sidecar_rate_limited_total", route="all") == 4
    await server.stop()


# -- fault injection -------------------------------------------------------------------------------------


async def test_fault_abort_answers_without_upstream_retry_or_breaker(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Fixed()
    server = await RawUpstream(upstream).start()
    running = await sidecar(config(
        [server.address],
        "fault: {abort: {status: 503, percent: 100}}\n"
        "            retries: {attempts: 3, on: [5xx, \"503\"], backoff: {base: 1ms, max: 2ms}}",
        "circuit_breaker: {min_requests: 1, failure_ratio: 0.1, open_timeout: 10s}"))
    for _ in range(5):
        status, headers, _ = await fetch(running.url("/x"))
        assert status == 503
        assert "error=proxy_internal_response" in headers["proxy-status"]
        assert 'details="route all: fault injected"' in headers["proxy-status"]
    assert upstream.hits == 0
    assert await metric(running, "sidecar_retries_total") == 0
    assert await metric(running, "sidecar_circuit_breaker_transitions_total") == 0
    assert await metric(running, "sidecar_circuit_breaker_state", endpoint=server.address) == 0
    assert await metric(running, "sidecar_upstream_attempts_total") == 0
    await server.stop()


async def test_fault_abort_uses_the_configured_status(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Fixed()
    server = await RawUpstream(upstream).start()
    running = await sidecar(config([server.address], "fault: {abort: {status: 418, percent: 100}}"))
    status, headers, _ = await fetch(running.url("/x"))
    assert status == 418
    assert "error=proxy_internal_response" in headers["proxy-status"]
    assert upstream.hits == 0
    await server.stop()


async def test_fault_delay_is_not_cut_by_the_route_timeout(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Fixed()
    server = await RawUpstream(upstream).start()
    running = await sidecar(config([server.address], "fault: {delay: {fixed: 200ms, percent: 100}}\n"
                                                      "            timeout: 100ms"))
    started = time.monotonic()
    status, _, body = await fetch(running.url("/x"))
    elapsed = time.monotonic() - started
    assert (status, body) == (200, b"from upstream")
    assert 0.19 <= elapsed < 0.5
    assert upstream.hits == 1
    await server.stop()


async def test_route_timeout_runs_after_the_fault_delay(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def hang(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)

    server = await RawUpstream(hang).start()
    running = await sidecar(config([server.address], "fault: {delay: {fixed: 200ms, percent: 100}}\n"
                                                     "            timeout: 150ms"))
    started = time.monotonic()
    status, headers, _ = await fetch(running.url("/x"))
    elapsed = time.monotonic() - started
    assert status == 504
    assert "error=http_response_timeout" in headers["proxy-status"]
    assert 0.33 <= elapsed < 0.7  # the 200ms delay, then the 150ms route timeout
    await server.stop()


# -- outlier detection -----------------------------------------------------------------------------------

OUTLIER = "outlier_detection: {consecutive_5xx: 3, interval: 200ms, base_ejection_time: 1s, max_ejection_percent: 50}"



async def test_outlier_is_ejected_and_comes_back(sidecar) -> None:  # type: ignore[no-untyped-def]
    bad, good = Fixed(503), Fixed(200)
    bad_server = await RawUpstream(bad).start()
    good_server = await RawUpstream(good).start()
    running = await sidecar(config([bad_server.address, good_server.address], cluster_extra=OUTLIER))
    for _ in range(6):  # round robin: three to each
        await fetch(running.url("/x"))
    assert bad.hits == 3
    await asyncio.sleep(0.3)  # one evaluation at least
    assert await metric(running, "sidecar_endpoints", state="ejected") == 1
    assert await metric(running, "sidecar_endpoints", state="healthy") == 1
    view = await endpoint_view(running, bad_server.address)
    assert (view["ejected"], view["health"]) == (True, "ejected")
    ejected_at = time.monotonic()
    statuses = [(await fetch(running.url("/x")))[0] for _ in range(10)]
    assert statuses == [200] * 10
    assert bad.hits == 3
    # Back after base_ejection_time (1 s; noticed at the next 200 ms evaluation).
    while (await endpoint_view(running, bad_server.address))["ejected"]:
        assert time.monotonic() - ejected_at < 1.6
        await asyncio.sleep(0.05)
    assert time.monotonic() - ejected_at >= 0.7
    assert await metric(running, "sidecar_endpoints", state="ejected") == 0
    for _ in range(2):
        await fetch(running.url("/x"))
    assert bad.hits == 4
    await bad_server.stop()
    await good_server.stop()


async def test_outlier_ejection_never_exceeds_max_percent(sidecar) -> None:  # type: ignore[no-untyped-def]
    first, second = Fixed(503), Fixed(503)
    first_server = await RawUpstream(first).start()
    second_server = await RawUpstream(second).start()
    running = await sidecar(config([first_server.address, second_server.address], cluster_extra=OUTLIER))
    for _ in range(6):
        await fetch(running.url("/x"))
    await asyncio.sleep(0.3)
    assert await metric(running, "sidecar_endpoints", state="ejected") == 1
    views = [await endpoint_view(running, s.address) for s in (first_server, second_server)]
    assert sorted(v["ejected"] for v in views) == [False, True]
    # Traffic goes to the one left, failing or not.
    hits = first.hits + second.hits
    for _ in range(4):
        assert (await fetch(running.url("/x")))[0] == 503
    remaining = first if not views[0]["ejected"] else second
    assert first.hits + second.hits == hits + 4
    assert remaining.hits >= 7
    await asyncio.sleep(0.3)
    assert await metric(running, "sidecar_endpoints", state="ejected") == 1
    await first_server.stop()
    await second_server.stop()


async def test_faults_do_not_feed_outlier_detection(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = Fixed(200)
    server = await RawUpstream(upstream).start()
    running = await sidecar(config([server.address], "fault: {abort: {status: 503, percent: 100}}",
                                   OUTLIER.replace("consecutive_5xx: 3", "consecutive_5xx: 1")))
    for _ in range(3):
        assert (await fetch(running.url("/x")))[0] == 503
    await asyncio.sleep(0.3)
    assert await metric(running, "sidecar_endpoints", state="ejected") == 0
    await server.stop()

"""Retries end to end: real clients, a real sidecar and raw upstreams that fail, hang, reset and recover.

CONTRACT.md ("Semantics users rely on"): `attempts: N` is N retries after the first try; the `on:`
conditions; which methods may be retried; the last upstream answer goes back as it was once retries are
exhausted; `per_try_timeout`, the route `timeout` over all attempts and backoff, the fixed `schedule`,
`Retry-After` up to `max_retry_after`, `replay_buffer`; a retry avoids endpoints already tried; nothing is
retried once the response has started. Also the retry budget (ratio, reserve, `max_concurrent`) under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable

import aiohttp

from tests.conftest import free_port
from tests.integration.admin_client import metric
from tests.integration.raw import RawClient, RawRequest, RawUpstream, outbound_config, response

Handler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)


def config(endpoints: list[str], retries: str, route_extra: str = "") -> str:
    """One listener, one route with `retries: {retries}`, one static cluster."""
    return outbound_config(endpoints, route_extra=f"retries: {{{retries}}}\n            {route_extra}")


# Backoff that does not slow the tests down (the backoff itself is tested on its own below).
FAST = "backoff: {base: 1ms, max: 2ms}"


def sequence(*statuses: int) -> Handler:
    """Answer the n-th request with statuses[n] (the last one repeats); the body and a header name the try."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        n = len(seen)
        seen.append(request)
        status = statuses[min(n, len(statuses) - 1)]
        writer.write(response(status, b"answer %d" % (n + 1), [(b"x-answer", b"%d" % (n + 1))]))

    seen: list[RawRequest] = []
    return handle


async def fetch(method: str, url: str, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, \
            session.request(method, url, **kwargs) as reply:  # type: ignore[arg-type]
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, await reply.read()



# -- what is retried, and what the client gets -------------------------------------------------------------


async def test_fails_twice_then_succeeds(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], {FAST}"))
    status, _, body = await fetch("GET", running.url("/x"))
    assert (status, body) == (200, b"answer 3")
    assert [r.header(b"x-sidecar-attempt") for r in upstream.requests] == [b"1", b"2", b"3"]
    assert await metric(running, "sidecar_retries_total", result="retried") == 2
    await upstream.stop()


async def test_exhausted_retries_return_the_last_upstream_answer_as_it_was(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], {FAST}"))
    status, headers, body = await fetch("GET", running.url("/x"))
    assert (status, body) == (503, b"answer 3")
    assert headers["x-answer"] == "3"
    assert "proxy-status" not in headers  # the upstream's answer, not a local reply
    assert len(upstream.requests) == 3
    await upstream.stop()


async def test_gateway_error_does_not_retry_a_500(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(500, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [gateway-error], {FAST}"))
    status, _, body = await fetch("GET", running.url("/x"))
    assert (status, body) == (500, b"answer 1")
    assert len(upstream.requests) == 1
    await upstream.stop()


async def test_retriable_4xx_retries_a_409(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(409, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [retriable-4xx], {FAST}"))
    status, _, _ = await fetch("GET", running.url("/x"))
    assert status == 200
    assert len(upstream.requests) == 2
    await upstream.stop()


async def test_a_listed_status_code_is_retried_and_others_are_not(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 502, 200)).start()
    running = await sidecar(config([upstream.address], f'attempts: 3, on: ["503"], {FAST}'))
    status, _, body = await fetch("GET", running.url("/x"))
    # 503 is listed (retried); the 502 that follows is not, so it is the answer.
    assert (status, body) == (502, b"answer 2")
    assert len(upstream.requests) == 2
    await upstream.stop()


async def test_post_without_idempotency_key_is_not_retried_on_503(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx, connect-failure], {FAST}"))
    status, _, body = await fetch("POST", running.url("/x"), data=b"payload")
    assert (status, body) == (503, b"answer 1")
    assert len(upstream.requests) == 1
    await upstream.stop()


async def test_post_is_retried_on_connect_failure(sidecar) -> None:  # type: ignore[no-untyped-def]
    working = await RawUpstream(sequence(200)).start()
    refusing = f"127.0.0.1:{free_port()}"  # nothing listens there
    running = await sidecar(config([refusing, working.address], f"attempts: 1, on: [connect-failure], {FAST}"))
    for _ in range(4):
        status, _, _ = await fetch("POST", running.url("/x"), data=b"payload")
        assert status == 200
    # Each POST reached the working endpoint exactly once; those that first met the refusing one came as try 2.
    assert len(working.requests) == 4
    assert {r.body for r in working.requests} == {b"payload"}
    assert b"2" in {r.header(b"x-sidecar-attempt") for r in working.requests}
    await working.stop()


async def test_post_with_idempotency_key_is_retried(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], {FAST}"))
    status, _, _ = await fetch("POST", running.url("/x"), data=b"payload", headers={"Idempotency-Key": "k-1"})
    assert status == 200
    assert [r.body for r in upstream.requests] == [b"payload", b"payload"]
    assert upstream.requests[1].header(b"idempotency-key") == b"k-1"
    await upstream.stop()


# -- request bodies on retry --------------------------------------------------------------------------------


async def test_whole_request_body_is_replayed_intact(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], {FAST}"))
    data = bytes(range(256)) * 16  # 4 KiB, all in one write
    status, _, _ = await fetch("PUT", running.url("/x"), data=data)
    assert status == 200
    assert [r.body for r in upstream.requests] == [data] * 3
    await upstream.stop()


async def test_streamed_request_body_is_replayed_intact(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], {FAST}", "timeout: 2s"))
    first, second = b"a" * 3000, b"b" * 3000
    client = await RawClient.connect(running.port())
    # The head and part of the body arrive together; the rest a little later, so the body streams.
    client.send(b"PUT /x HTTP/1.1\r\nhost: x\r\ncontent-length: 6000\r\n\r\n" + first)
    await asyncio.sleep(0.1)
    client.send(second)
    [reply] = await client.responses(1)
    client.close()
    bodies = [r.body for r in upstream.requests]
    await upstream.stop()
    # Whatever happens, never a truncated replay (an upstream would wait for the missing bytes forever).
    assert all(body == first + second for body in bodies)
    assert reply.status == 200
    assert len(bodies) == 2


async def test_streamed_chunked_body_is_replayed_intact(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], {FAST}"))
    client = await RawClient.connect(running.port())
    # The head alone first: the retry policy keeps the body from its first byte on.
    client.send(b"PUT /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0.05)
    client.send(b"5\r\nhello\r\n")
    await asyncio.sleep(0.05)
    client.send(b"6\r\n world\r\n0\r\n\r\n")
    [reply] = await client.responses(1)
    client.close()
    assert reply.status == 200
    assert [r.body for r in upstream.requests] == [b"hello world"] * 2
    await upstream.stop()


async def test_expect_continue_body_is_replayed_intact(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], {FAST}", "timeout: 2s"))
    client = await RawClient.connect(running.port())
    client.send(b"PUT /x HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\nexpect: 100-continue\r\n\r\n")
    [interim] = await client.responses(1)
    assert interim.status == 100
    client.send(b"hello world")
    [reply] = await client.responses(1)
    client.close()
    assert reply.status == 200
    assert [r.body for r in upstream.requests] == [b"hello world"] * 2
    await upstream.stop()


async def test_body_larger_than_replay_buffer_is_not_retried(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], replay_buffer: 1KiB, {FAST}"))
    status, _, body = await fetch("PUT", running.url("/x"), data=b"z" * 4096)
    assert (status, body) == (503, b"answer 1")
    assert len(upstream.requests) == 1
    # A small body on the same route still is.
    status, _, _ = await fetch("PUT", running.url("/x"), data=b"z" * 512)
    assert status == 200
    await upstream.stop()


async def test_streamed_body_larger_than_replay_buffer_is_not_retried(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503, 200)).start()
    running = await sidecar(config([upstream.address], f"attempts: 2, on: [5xx], replay_buffer: 1KiB, {FAST}"))
    client = await RawClient.connect(running.port())
    client.send(b"PUT /x HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\n\r\n")
    await asyncio.sleep(0.05)
    client.send(b"z" * 2048)
    await asyncio.sleep(0.05)
    client.send(b"z" * 2048)
    [reply] = await client.responses(1)
    client.close()
    assert (reply.status, reply.body) == (503, b"answer 1")
    assert len(upstream.requests) == 1
    await upstream.stop()


# -- time: per-try timeout, route timeout, backoff, Retry-After ---------------------------------------------


def hang(release: asyncio.Event) -> Handler:
    """Never answer (until `release` is set at the end of the test)."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        arrivals.append(time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 5)
        writer.close()

    arrivals: list[float] = []
    handle.arrivals = arrivals  # type: ignore[attr-defined]
    return handle


async def test_per_try_timeout_is_retried_then_504(sidecar) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()
    upstream = await RawUpstream(hang(release)).start()
    running = await sidecar(config([upstream.address],
                                   f"attempts: 2, per_try_timeout: 200ms, on: [gateway-error], {FAST}"))
    started = time.monotonic()
    status, headers, _ = await fetch("GET", running.url("/x"))
    elapsed = time.monotonic() - started
    assert status == 504
    assert "error=http_response_timeout" in headers["proxy-status"]
    assert len(upstream.requests) == 3
    assert 0.55 <= elapsed < 1.5
    assert await metric(running, "sidecar_upstream_attempts_total", outcome="timeout") == 3
    release.set()
    await upstream.stop()


async def test_route_timeout_bounds_all_attempts_and_backoff(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503)).start()
    running = await sidecar(config([upstream.address], "attempts: 5, on: [5xx], backoff: {schedule: [300ms]}",
                                   "timeout: 500ms"))
    started = time.monotonic()
    status, headers, _ = await fetch("GET", running.url("/x"))
    elapsed = time.monotonic() - started
    assert status == 504
    assert "error=http_response_timeout" in headers["proxy-status"]
    assert 0.45 <= elapsed < 0.9
    assert len(upstream.requests) == 2  # at 0 s and 0.3 s; the third would be at 0.6 s
    await upstream.stop()


async def test_route_timeout_bounds_hanging_attempts(sidecar) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()
    upstream = await RawUpstream(hang(release)).start()
    running = await sidecar(config([upstream.address],
                                   f"attempts: 5, per_try_timeout: 200ms, on: [gateway-error], {FAST}",
                                   "timeout: 500ms"))
    started = time.monotonic()
    status, headers, _ = await fetch("GET", running.url("/x"))
    elapsed = time.monotonic() - started
    assert status == 504
    assert "error=http_response_timeout" in headers["proxy-status"]
    assert 0.45 <= elapsed < 0.9
    assert len(upstream.requests) == 3
    release.set()
    await upstream.stop()


def timed(statuses: tuple[int, ...], headers: list[tuple[bytes, bytes]] | None = None) -> Handler:
    """Like `sequence`, recording when each request arrived (and adding `headers` to every answer)."""

    async def handle(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        n = len(arrivals)
        arrivals.append(time.monotonic())
        writer.write(response(statuses[min(n, len(statuses) - 1)], b"answer %d" % (n + 1), headers))

    arrivals: list[float] = []
    handle.arrivals = arrivals  # type: ignore[attr-defined]
    return handle


async def test_fixed_backoff_schedule_is_used_as_written(sidecar) -> None:  # type: ignore[no-untyped-def]
    handler = timed((503, 503, 200))
    upstream = await RawUpstream(handler).start()
    running = await sidecar(config([upstream.address], "attempts: 2, on: [5xx], backoff: {schedule: [100ms, 300ms]}"))
    status, _, _ = await fetch("GET", running.url("/x"))
    assert status == 200
    arrivals = handler.arrivals  # type: ignore[attr-defined]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(gaps) == 2
    assert 0.09 <= gaps[0] < 0.25
    assert 0.29 <= gaps[1] < 0.45
    await upstream.stop()


async def test_retry_after_delays_the_retry_up_to_max_retry_after(sidecar) -> None:  # type: ignore[no-untyped-def]
    handler = timed((503, 200), [(b"retry-after", b"1")])
    upstream = await RawUpstream(handler).start()
    running = await sidecar(config([upstream.address], f"attempts: 1, on: [5xx], max_retry_after: 400ms, {FAST}"))
    status, _, _ = await fetch("GET", running.url("/x"))
    assert status == 200
    first, second = handler.arrivals  # type: ignore[attr-defined]
    assert 0.38 <= second - first < 0.6  # Retry-After: 1, capped at 400ms
    await upstream.stop()


async def test_retry_after_shorter_than_the_cap_is_honoured(sidecar) -> None:  # type: ignore[no-untyped-def]
    handler = timed((503, 200), [(b"retry-after", b"1")])
    upstream = await RawUpstream(handler).start()
    running = await sidecar(config([upstream.address], f"attempts: 1, on: [5xx], {FAST}"))
    status, _, _ = await fetch("GET", running.url("/x"))
    assert status == 200
    first, second = handler.arrivals  # type: ignore[attr-defined]
    assert 0.98 <= second - first < 1.3
    await upstream.stop()


# -- where retries go, and when they must not happen -----------------------------------------------------------


async def test_a_retry_prefers_an_endpoint_not_yet_tried(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def slow_failure(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)  # concurrent requests move the round robin meanwhile
        writer.write(response(503, b"bad"))

    bad = await RawUpstream(slow_failure).start()
    good = await RawUpstream(sequence(200)).start()
    running = await sidecar(config([bad.address, good.address], f"attempts: 1, on: [5xx], {FAST}"))
    results = await asyncio.gather(*(fetch("GET", running.url(f"/{i}")) for i in range(12)))
    # One retry each: had any retry gone back to the failing endpoint, its 503 would be the answer.
    assert [status for status, _, _ in results] == [200] * 12
    assert all(r.header(b"x-sidecar-attempt") == b"1" for r in bad.requests)
    retried = [r for r in good.requests if r.header(b"x-sidecar-attempt") == b"2"]
    assert len(retried) == len(bad.requests) > 0
    await bad.stop()
    await good.stop()


async def test_no_retry_once_the_response_has_started(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def head_then_reset(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()  # type: ignore[attr-defined]

    upstream = await RawUpstream(head_then_reset).start()
    running = await sidecar(config([upstream.address], f"attempts: 3, on: [reset, 5xx], {FAST}"))
    client = await RawClient.connect(running.port())
    client.send(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")
    replies = await client.responses(1)
    assert replies == []  # the client saw a head and part of a body, then the connection broke
    assert client.eof
    client.close()
    assert len(upstream.requests) == 1
    await upstream.stop()


async def test_reset_before_the_head_is_retried(sidecar) -> None:  # type: ignore[no-untyped-def]
    async def reset_first(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        if request.header(b"x-sidecar-attempt") == b"1":
            writer.transport.abort()  # type: ignore[attr-defined]
            return
        writer.write(response(200, b"second time"))

    upstream = await RawUpstream(reset_first).start()
    running = await sidecar(config([upstream.address], f"attempts: 1, on: [reset], {FAST}"))
    status, _, body = await fetch("GET", running.url("/x"))
    assert (status, body) == (200, b"second time")
    assert len(upstream.requests) == 2
    await upstream.stop()


# -- the retry budget ---------------------------------------------------------------------------------------


async def test_retry_storm_is_bounded_by_the_budget(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await RawUpstream(sequence(503)).start()
    running = await sidecar(config(
        [upstream.address],
        f"attempts: 3, on: [5xx], {FAST}, budget: {{ratio: 0.2, min_per_second: 10, max_concurrent: 50}}"))
    total = 200
    statuses: list[int] = []

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        # ~100 requests/s from each of the workers: 200 over ~2 s.
        async with session.get(running.url(f"/{i}")) as reply:
            statuses.append(reply.status)
            await reply.read()

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for i in range(0, total, 10):
            await asyncio.gather(*(one(session, i + j) for j in range(10)))
            await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    assert statuses == [503] * total  # the upstream's own answer, budget or not
    hits = len(upstream.requests)
    # CONTRACT.md: retries <= ratio x requests + min_per_second x 10 over the 10 s window (the whole run).
    assert hits <= 1.2 * total + 10 * 10 + 5, (hits, elapsed)
    assert hits < 4 * total  # without a budget: 3 retries each
    exhausted = await metric(running, "sidecar_retries_total", result="budget_exhausted")
    retried = await metric(running, "sidecar_retries_total", result="retried")
    assert exhausted > 0
    assert retried == hits - total
    await upstream.stop()


async def test_max_concurrent_caps_retries_in_flight(sidecar) -> None:  # type: ignore[no-untyped-def]
    in_flight = 0
    retry_peak = 0

    async def slow_failure(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, retry_peak
        retry = request.header(b"x-sidecar-attempt") != b"1"
        if retry:
            in_flight += 1
            retry_peak = max(retry_peak, in_flight)
        await asyncio.sleep(0.2)
        if retry:
            in_flight -= 1
        writer.write(response(503, b"bad"))

    upstream = await RawUpstream(slow_failure).start()
    running = await sidecar(config(
        [upstream.address], f"attempts: 1, on: [5xx], {FAST}, budget: {{max_concurrent: 1}}"))
    results = await asyncio.gather(*(fetch("GET", running.url(f"/{i}")) for i in range(5)))
    assert [status for status, _, _ in results] == [503] * 5
    assert retry_peak == 1
    assert await metric(running, "sidecar_retries_total", result="retried") == 1
    assert await metric(running, "sidecar_retries_total", result="limit_exceeded") == 4
    assert len(upstream.requests) == 6
    await upstream.stop()

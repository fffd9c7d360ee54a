"""Balancers end to end through real sockets: two aiohttp upstreams, one slowed down; the share of requests
each balancer sends the slow one under concurrent load, and ring hash keeping a key on one endpoint.

The shares are printed (run with -s to see them); the assertions are loose enough for a busy machine:
round robin splits evenly whatever the latency, least request and peak EWMA send the slow endpoint
clearly less."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from tests.integration.raw import outbound_config
from tests.integration.upstreams import Handler, Upstream, start_upstream

SLOW = 0.040  # seconds the slow upstream takes per request
FAST = 0.002
CONCURRENCY = 8
REQUESTS = 400


def delayed(seconds: float) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(text="ok")
    return handler


async def drive(url: str, requests: int, concurrency: int, headers: dict[str, str] | None = None) -> list[int]:
    """`requests` GETs from `concurrency` workers sharing one session; their statuses."""
    statuses: list[int] = []
    remaining = iter(range(requests))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async def worker() -> None:
            for _ in remaining:
                async with session.get(url, headers=headers) as reply:
                    await reply.read()
                    statuses.append(reply.status)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def slow_share(sidecar, balancer: str) -> float:  # type: ignore[no-untyped-def]
    slow = await start_upstream(delayed(SLOW))
    fast = await start_upstream(delayed(FAST))
    try:
        running = await sidecar(outbound_config([slow.address, fast.address],
                                                cluster_extra=f"load_balancer: {balancer}"))
        await drive(running.url("/warm"), 40, CONCURRENCY)  # peak EWMA learns; pools fill
        slow.requests.clear()
        fast.requests.clear()
        statuses = await drive(running.url("/x"), REQUESTS, CONCURRENCY)
        assert statuses == [200] * REQUESTS
        share = len(slow.requests) / (len(slow.requests) + len(fast.requests))
        print(f"\n{balancer}: slow endpoint ({SLOW * 1000:.0f} ms vs {FAST * 1000:.0f} ms) took "
              f"{len(slow.requests)}/{REQUESTS} = {share:.1%}")
        return share
    finally:
        await slow.stop()
        await fast.stop()


async def test_round_robin_splits_evenly_whatever_the_latency(sidecar) -> None:  # type: ignore[no-untyped-def]
    assert 0.45 <= await slow_share(sidecar, "round_robin") <= 0.55


@pytest.mark.parametrize("balancer", ["least_request", "peak_ewma"])
async def test_latency_aware_balancers_send_a_slow_endpoint_less(sidecar, balancer: str) -> None:  # type: ignore[no-untyped-def]
    assert await slow_share(sidecar, balancer) < 0.30


async def test_ring_hash_keeps_a_key_on_one_endpoint(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstreams: list[Upstream] = [await start_upstream(name=f"u{n}") for n in range(3)]
    try:
        running = await sidecar(outbound_config([u.address for u in upstreams],
                                                cluster_extra="load_balancer: {ring_hash: {header: x-user-id}}"))
        homes: dict[str, set[str]] = {}
        async with aiohttp.ClientSession() as session:
            for user in range(30):
                for _ in range(4):
                    async with session.get(running.url("/x"), headers={"x-user-id": f"user-{user}"}) as reply:
                        homes.setdefault(f"user-{user}", set()).add((await reply.json())["name"])
        assert all(len(names) == 1 for names in homes.values()), homes
        spread = Counter(next(iter(names)) for names in homes.values())
        assert len(spread) == 3, spread  # 30 users over 3 endpoints: each gets some
    finally:
        for upstream in upstreams:
            await upstream.stop()


async def test_clusters_shows_each_endpoints_peak_ewma_estimate(sidecar) -> None:  # type: ignore[no-untyped-def]
    slow = await start_upstream(delayed(SLOW))
    fast = await start_upstream(delayed(FAST))
    try:
        running = await sidecar(outbound_config([slow.address, fast.address], cluster_extra="load_balancer: peak_ewma"))
        await drive(running.url("/warm"), 40, CONCURRENCY)
        async with aiohttp.ClientSession() as session, session.get(running.admin_url("/clusters")) as reply:
            clusters = await reply.json()
        (cluster,) = [c for c in clusters["clusters"] if c["load_balancer"] == "peak_ewma"]
        estimate = {e["address"]: e["ewma_latency_ms"] for e in cluster["endpoints"]}
        assert estimate[slow.address] > estimate[fast.address] > 0  # milliseconds, learnt from the answers
        assert estimate[slow.address] >= SLOW * 1000 / 2
    finally:
        await slow.stop()
        await fast.stop()


def static_config(entries: str, cluster_extra: str = "", top_extra: str = "") -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    {top_extra}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - {{name: all, match: {{prefix: /}}, cluster: backend}}
    clusters:
      - name: backend
        endpoints: [{entries}]
        {cluster_extra}
    """


@pytest.mark.parametrize("balancer", ["round_robin", "least_request"])
async def test_static_endpoint_weights_set_the_shares(sidecar, balancer: str) -> None:  # type: ignore[no-untyped-def]
    heavy = await start_upstream(delayed(0.0))
    light = await start_upstream(delayed(0.0))
    try:
        running = await sidecar(static_config(f'{{address: "{heavy.address}", weight: 3}}, "{light.address}"',
                                              f"load_balancer: {balancer}"))
        statuses = await drive(running.url("/x"), 200, 1 if balancer == "round_robin" else 4)
        assert statuses == [200] * 200
        share = len(heavy.requests) / 200
        # Round robin's smooth schedule is exact (A A B A ...); least request weighs in-flight by 1/weight.
        assert share == 0.75 if balancer == "round_robin" else 0.6 <= share <= 0.9, share
        clusters = await _clusters(running)
        assert sorted(e["weight"] for e in clusters[0]["endpoints"]) == [1, 3]
    finally:
        await heavy.stop()
        await light.stop()


async def test_static_endpoints_in_the_local_zone_are_preferred(sidecar) -> None:  # type: ignore[no-untyped-def]
    near = await start_upstream(delayed(0.0))
    far = await start_upstream(delayed(0.0))
    try:
        running = await sidecar(static_config(
            f'{{address: "{near.address}", zone: z1}}, {{address: "{far.address}", zone: z2}}',
            "circuit_breaker: {min_requests: 2, failure_ratio: 0.5, interval: 100ms, open_timeout: 30s}",
            top_extra="node: {zone: z1}"))
        assert await drive(running.url("/x"), 20, 2) == [200] * 20
        assert (len(near.requests), len(far.requests)) == (20, 0)
        # The local endpoint dies; once its breaker opens the zone has nothing available: the other takes all.
        await near.stop()
        await asyncio.sleep(0.15)  # a new breaker interval: the 20 successes no longer count
        statuses = await drive(running.url("/x"), 20, 1)
        assert statuses[:2] == [503, 503] and statuses[2:] == [200] * 18
        assert len(far.requests) == 18
    finally:
        await far.stop()


async def _clusters(running):  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session, session.get(running.admin_url("/clusters")) as reply:
        return (await reply.json())["clusters"]

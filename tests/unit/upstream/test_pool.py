"""Pool idle timers in virtual time: connections idle past `idle_timeout` are swept by one timer of the injected
clock, re-armed for the oldest survivor, and closing the pool drops the timer. Connections are real (a local
listening socket); only the time is virtual."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from proxy.clock import ManualClock
from proxy.http.client import ClientConnection
from proxy.telemetry.metrics import Metrics
from proxy.upstream.pool import Pool, PoolSettings


@pytest.fixture
async def upstream_port() -> AsyncIterator[int]:
    """A local server that accepts connections and keeps them open until the peer closes."""
    peers: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in peers:
        writer.close()
    server.close()
    await server.wait_closed()


async def idle_connection(pool: Pool) -> ClientConnection:
    """A new connection handed back to the pool as a finished keep-alive exchange would hand it."""
    conn = await pool.connect()
    assert conn.on_idle is not None
    conn.on_idle(conn)
    return conn


async def test_idle_connections_are_swept_after_idle_timeout_in_virtual_time(upstream_port: int) -> None:
    clock = ManualClock(start=0.0)
    pool = Pool("127.0.0.1", upstream_port, PoolSettings(idle_timeout=60.0, connector=ClientConnection), "test", clock)
    older = await idle_connection(pool)
    assert (pool.idle_count, pool.open_count, clock.pending) == (1, 1, 1)
    clock.advance(30.0)
    newer = await idle_connection(pool)
    assert (pool.idle_count, clock.pending) == (2, 1)  # one timer for the pool, not one per connection
    clock.advance(29.5)  # (binary fractions: virtual time adds up exactly)
    assert pool.idle_count == 2 and not older.closed
    clock.advance(0.5)  # t=60: the older connection's idle_timeout has passed, not the newer one's
    assert older.closed and not newer.closed
    assert (pool.idle_count, pool.open_count, clock.pending) == (1, 1, 1)
    assert clock.next_due() == 90.0  # re-armed for the survivor
    clock.advance(30.0)
    assert newer.closed
    assert (pool.idle_count, pool.open_count, clock.pending) == (0, 0, 0)
    assert pool.take_idle() is None


async def test_a_connection_taken_before_its_timeout_is_not_swept(upstream_port: int) -> None:
    clock = ManualClock(start=0.0)
    pool = Pool("127.0.0.1", upstream_port, PoolSettings(idle_timeout=10.0, connector=ClientConnection), "test", clock)
    conn = await idle_connection(pool)
    clock.advance(5.0)
    assert pool.take_idle() is conn
    clock.advance(10.0)  # the sweep finds no idle connection and arms nothing
    assert not conn.closed and clock.pending == 0
    assert conn.on_idle is not None
    conn.on_idle(conn)  # idle again from t=15: swept at t=25
    clock.advance(9.0)
    assert not conn.closed
    clock.advance(1.0)
    assert conn.closed


async def test_closing_the_pool_closes_idle_connections_and_drops_its_timer(upstream_port: int) -> None:
    clock = ManualClock(start=0.0)
    pool = Pool("127.0.0.1", upstream_port, PoolSettings(idle_timeout=10.0, connector=ClientConnection), "test", clock)
    conn = await idle_connection(pool)
    assert clock.pending == 1
    pool.close()
    assert conn.closed and pool.idle_count == 0 and clock.pending == 0


async def test_connections_and_bytes_reach_the_clusters_counters_once(upstream_port: int) -> None:
    registry = CollectorRegistry()
    traffic = Metrics(registry).cluster_traffic("c")
    clock = ManualClock(start=0.0)
    pool = Pool("127.0.0.1", upstream_port, PoolSettings(connector=ClientConnection, traffic=traffic), "test", clock)
    conn = await pool.connect()
    assert traffic.connections.value == 1
    conn.rx, conn.tx = 120, 45  # what the codec counted during one exchange
    assert conn.on_idle is not None
    conn.on_idle(conn)  # back in the pool: its bytes are reported, once
    assert (traffic.rx.value, traffic.tx.value, conn.rx, conn.tx) == (120, 45, 0, 0)
    conn.rx = 7  # e.g. bytes of a response read as it closes
    pool.close()
    assert conn.on_lost is not None
    conn.on_lost(conn)  # lost: the rest is reported
    conn.on_lost(conn)  # twice adds nothing
    assert (traffic.rx.value, traffic.tx.value) == (127, 45)
    assert traffic.connections.value == 1

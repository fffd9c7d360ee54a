"""Micro-benchmark: what a new upstream connection costs the sidecar, plain and with mTLS origination.

Opens connections through a real `Pool` on uvloop (as the sidecar does) to a local upstream running in
another process (so only the client's CPU is counted): plain TCP, an mTLS full handshake (ECDSA P-256 dev
certificates, TLS 1.3, client certificate, identity check), and an mTLS handshake that resumes the
endpoint's session. Each connection is aborted once made. Reports CPU time (this process) and wall time
per connection. Keep-alive reuse costs none of this: a pooled connection is taken without a handshake.
Run: `python -m benchmarks.micro.bench_tls_connect [--iterations N]`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from benchmarks.micro._common import iterations
from proxy.clock import Clock
from proxy.config.model import ClusterTlsConfig
from proxy.http.client import ClientConnection
from proxy.security.certs import init_ca, issue
from proxy.security.origination import ClusterOrigin
from proxy.security.tls import server_context
from proxy.upstream.pool import Pool, PoolSettings

UPSTREAM_ID = "spiffe://cluster.local/ns/bench/sa/upstream"


def _serve(root: str, tls: bool, ready: multiprocessing.Queue[int]) -> None:
    async def main() -> None:
        context = server_context(f"{root}/up.pem", f"{root}/up-key.pem", f"{root}/ca/ca.pem", True) if tls else None
        if context is not None:
            # The sidecar's own listeners issue no TLS 1.3 tickets (decision 0014); this upstream stands for one
            # that does (OpenSSL's default of two), or the resumed runs could never resume.
            context.num_tickets = 2

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=context)
        ready.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    uvloop.run(main())


def start_upstream(root: str, tls: bool) -> tuple[multiprocessing.Process, int]:
    ready: multiprocessing.Queue[int] = multiprocessing.Queue()
    process = multiprocessing.Process(target=_serve, args=(root, tls, ready), daemon=True)
    process.start()
    return process, ready.get(timeout=10)


async def per_connection(make_pool: object, number: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per connection, over `number` connections."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(number):
        pool = make_pool()  # type: ignore[operator]
        conn = await pool.connect()
        conn.abort()
    return (time.process_time() - cpu) / number, (time.perf_counter() - wall) / number


async def measure(root: str, number: int) -> dict[str, tuple[float, float]]:
    results: dict[str, tuple[float, float]] = {}
    plain, plain_port = start_upstream(root, tls=False)
    secure, tls_port = start_upstream(root, tls=True)
    try:
        clock = Clock()
        plain_settings = PoolSettings(connector=ClientConnection)
        config = ClusterTlsConfig(cert=f"{root}/me.pem", key=f"{root}/me-key.pem", ca=f"{root}/ca/ca.pem",
                                  expect_identity=UPSTREAM_ID)
        origin = ClusterOrigin.from_config("bench", config)
        tls_settings = PoolSettings(connector=ClientConnection, tls=origin)
        shared = Pool("127.0.0.1", tls_port, tls_settings, "bench", clock)
        warm = await shared.connect()  # the first session (with its TLS 1.3 ticket) for the resumed runs
        await asyncio.sleep(0.05)
        warm.abort()
        for label, make_pool in (
            ("plain TCP connect", lambda: Pool("127.0.0.1", plain_port, plain_settings, "bench", clock)),
            # A new pool each time: a new endpoint state, so no session to offer.
            ("mTLS connect, full handshake", lambda: Pool("127.0.0.1", tls_port, tls_settings, "bench", clock)),
            ("mTLS connect, resumed session", lambda: shared),
        ):
            await per_connection(make_pool, max(10, number // 10))  # warm-up
            runs = [await per_connection(make_pool, number) for _ in range(3)]
            results[label] = min(runs, key=lambda run: run[0])
        snapshot = shared.tls_snapshot()
        assert snapshot is not None and snapshot["resumed_handshakes"], snapshot
    finally:
        plain.kill()
        secure.kill()
    return results


def main() -> int:
    number = iterations(sys.argv, 300, __doc__.splitlines()[0] if __doc__ else "")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        init_ca(root / "ca")
        issue(root / "ca", UPSTREAM_ID, root / "up")
        issue(root / "ca", "spiffe://cluster.local/ns/bench/sa/sidecar", root / "me")
        results = uvloop.run(measure(str(root), number))
    print(f"{number} connections per measurement, best of 3, Python {sys.version.split()[0]}, uvloop")
    width = max(map(len, results))
    for label, (cpu, wall) in results.items():
        print(f"{label:<{width}}  {cpu * 1e6:7.0f} us CPU  {wall * 1e6:7.0f} us wall  per connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())

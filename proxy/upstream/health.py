"""Active health checks of one cluster's endpoints (a cluster with `health_check:`).

Owns the checker of one cluster (`HealthChecker`, run as a background task by the app): every `interval`,
jittered down by up to 10 % so that sidecars started together do not probe in lockstep, it checks every
endpoint of the cluster's current set that is not terminating, all at once, each check bounded by `timeout`;
the consecutive pass/fail counters per endpoint (keyed by address; an endpoint that leaves the set is
forgotten); the verdict (`Cluster.set_health` on a change, which takes the endpoint out of the balancer's
snapshot or puts it back); and the /clusters view of it (`snapshot`).

A check: a fresh connection (never a pooled one: a check must see whether the endpoint accepts a new
connection now, and must not take a connection a request could use), opened by the endpoint's pool, so a
cluster with `tls:` is checked over TLS with exactly the pools' client context, SNI and identity check;
then `GET <path>` with `User-Agent: horizon-sidecar-health-check`, in the protocol the cluster's requests
use: HTTP/1.1 (`Host: <endpoint>`, `Connection: close`; the answer's status line, read within the first 8
KiB), or HTTP/2 for `protocol: http2` and for `protocol: auto` when ALPN chose `h2` (the connection preface
and SETTINGS, one stream with `:authority <endpoint>`; the answer's response HEADERS, on our HTTP/2 engine).
It passes on any 2xx status; a connect or handshake failure, a refused identity, a timeout, a closed
connection, a reset stream, a GOAWAY before the answer or a malformed answer fails it. With `grpc_service`
(HTTP/2 clusters only) the check is gRPC's health protocol instead, as Envoy's `grpc_health_check` does:
`POST /grpc.health.v1.Health/Check` with a HealthCheckRequest for that service; it passes when the answer
ends with `grpc-status: 0` and its HealthCheckResponse says SERVING (a pure gRPC server resets plain GETs).
The exchange itself (request, reading the answer, gRPC's health messages) is `proxy.upstream.health_probe`.

Thresholds: a healthy endpoint turns unhealthy after `unhealthy_threshold` consecutive failures, an
unhealthy one healthy after `healthy_threshold` consecutive passes. A new endpoint (never checked) is
routable, and its first check decides: a first failure marks it unhealthy at once. Why these choices, and
how Envoy differs: docs/decisions/0020-active-health-checks.md.

Must not: run on the request path, touch pooled connections, decide routing (the cluster rebuilds its
balancer), or let an error in one check end the loop (it counts as that check's failure).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Final, cast

from proxy.clock import Clock
from proxy.config.model import HealthCheckConfig
from proxy.errors import UpstreamError
from proxy.upstream.cluster import Cluster
from proxy.upstream.endpoint import DRAINING, Endpoint
from proxy.upstream.health_probe import Answer, BadAnswer

log = logging.getLogger("proxy.upstream.health")

# Each round starts up to this fraction of `interval` early.
JITTER: Final = 0.1

# One check of one endpoint: None when it passes, else why it failed (a few words for the log and /clusters).
Probe = Callable[[Endpoint], Awaitable[str | None]]


class _Record:
    """What the checker knows of one endpoint: its consecutive passes or failures and its last check."""

    __slots__ = ("failures", "last", "passes", "reason")

    def __init__(self) -> None:
        self.passes = 0
        self.failures = 0
        # "pass" or "fail" (None: never checked), and why the last failure failed.
        self.last: str | None = None
        self.reason: str | None = None


class HealthChecker:
    """The active health checks of one cluster."""

    __slots__ = ("_clock", "_records", "cluster", "config", "probe", "rounds")

    def __init__(self, cluster: Cluster, config: HealthCheckConfig, clock: Clock,
                 probe: Probe | None = None) -> None:
        self.cluster = cluster
        self.config = config
        self._clock = clock
        # How one endpoint is checked (tests substitute a fake); the default is the HTTP check.
        self.probe: Probe = probe if probe is not None else self.http_probe
        self._records: dict[str, _Record] = {}
        self.rounds = 0

    async def run(self) -> None:
        """Check every `interval` (jittered), the first round at once, until cancelled."""
        clock = self._clock
        while True:
            started = clock.now()
            try:
                await self.check_round()
            except Exception:  # a bug here must not end health checking: said, and the next round runs
                log.exception("cluster %s: health check round failed", self.cluster.name)
            await clock.sleep(max(0.0, started + self.next_interval() - clock.now()))

    def next_interval(self) -> float:
        """`interval`, shortened by a random 0-10 %."""
        return self.config.interval * (1.0 - JITTER * self._clock.random.random())

    async def check_round(self) -> None:
        """Check every endpoint of the current set that is not terminating (concurrently), then apply the
        results of those still in the set and forget endpoints that left it."""
        endpoints = [e for e in self.cluster.endpoints if not e.terminating and e.state is not DRAINING]
        results = await asyncio.gather(*(self._check(e) for e in endpoints))
        current = set(self.cluster.endpoints)
        for endpoint, failure in zip(endpoints, results, strict=True):
            if endpoint in current:
                self.record(endpoint, failure)
        addresses = {e.address for e in current}
        for address in [a for a in self._records if a not in addresses]:
            del self._records[address]
        self.rounds += 1

    async def _check(self, endpoint: Endpoint) -> str | None:
        try:
            return await self.probe(endpoint)
        except Exception as exc:  # a probe's bug fails that check only
            log.warning("cluster %s: health check of %s raised %r", self.cluster.name, endpoint.address, exc)
            return f"check raised {type(exc).__name__}"

    def record(self, endpoint: Endpoint, failure: str | None) -> None:
        """Count one check's result (`failure`: None for a pass) and mark the endpoint healthy or unhealthy
        when a threshold is reached (a never-checked endpoint: its first check decides)."""
        record = self._records.get(endpoint.address)
        first = record is None
        if record is None:
            record = self._records[endpoint.address] = _Record()
        if failure is None:
            record.passes += 1
            record.failures = 0
            record.last = "pass"
            if endpoint.unhealthy and record.passes >= self.config.healthy_threshold:
                self._set(endpoint, True, record)
            return
        record.failures += 1
        record.passes = 0
        record.last = "fail"
        record.reason = failure
        if not endpoint.unhealthy and (first or record.failures >= self.config.unhealthy_threshold):
            self._set(endpoint, False, record)

    def _set(self, endpoint: Endpoint, healthy: bool, record: _Record) -> None:
        name = self.cluster.name
        if healthy:
            log.info("cluster %s: endpoint %s healthy again (%d consecutive passes)", name, endpoint.address,
                     record.passes)
        else:
            log.warning("cluster %s: endpoint %s unhealthy: %s (%d consecutive failures)", name, endpoint.address,
                        record.reason, record.failures)
        self.cluster.set_health(endpoint, healthy)

    async def http_probe(self, endpoint: Endpoint) -> str | None:
        """The HTTP check of one endpoint: None when it answers 2xx within `timeout`, else why not."""
        config = self.config
        answer = Answer(asyncio.get_running_loop())
        transport: asyncio.BaseTransport | None = None
        pool = endpoint.pool
        try:
            async with asyncio.timeout(config.timeout):
                transport, _ = await pool.open_unpooled(lambda: answer)
                # Asked only now: for a TLS cluster, after the pool admitted the upstream's identity.
                http2 = _speaks_http2(pool.settings.multiplexed is not None, pool.settings.negotiate, transport)
                if config.grpc_service is not None and not http2:
                    return "gRPC health check, but ALPN chose HTTP/1.1"
                scheme = b"https" if pool.settings.tls is not None else b"http"
                answer.ask(cast(asyncio.WriteTransport, transport), http2, scheme, endpoint.address, config.path,
                           config.grpc_service)
                status = await answer.status
        except TimeoutError:
            return f"no answer within {config.timeout:g}s"
        except (OSError, UpstreamError, BadAnswer) as exc:
            return _failure(exc)
        finally:
            answer.status.cancel()  # settled either way: a late connection_lost sets nothing nobody reads
            if transport is not None:
                transport.close()
        return _verdict(status)

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows as the cluster's `health_check`: its settings and, per endpoint address, the
        last check's result and the consecutive counts."""
        config = self.config
        return {
            "path": config.path,
            "grpc_service": config.grpc_service,
            "interval_seconds": config.interval,
            "timeout_seconds": config.timeout,
            "healthy_threshold": config.healthy_threshold,
            "unhealthy_threshold": config.unhealthy_threshold,
            "rounds": self.rounds,
            "endpoints": {
                address: {"last": r.last, "consecutive_passes": r.passes, "consecutive_failures": r.failures,
                          "last_failure": r.reason}
                for address, r in self._records.items()
            },
        }


def _verdict(status: int) -> str | None:
    """An answer's verdict: None for 2xx, else why it fails."""
    return None if 200 <= status <= 299 else f"status {status}"


def _speaks_http2(multiplexed: bool, negotiate: bool, transport: asyncio.BaseTransport) -> bool:
    """Whether a check asks in HTTP/2: as the cluster's requests would on this connection."""
    if not multiplexed:
        return False
    if not negotiate:
        return True
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"


def _failure(exc: Exception) -> str:
    """Why a check that raised failed, in a few words."""
    if isinstance(exc, UpstreamError):
        return exc.context
    if isinstance(exc, BadAnswer):
        return str(exc)
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    return f"connect failed: {getattr(exc, 'strerror', None) or exc}"

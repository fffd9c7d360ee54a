"""Active health checks end to end through real sockets: a cluster of real upstreams whose /healthz answer
is switched between 200 and 503 (the failing one leaves the balancer until it passes again, /clusters shows
it `unhealthy` and `sidecar_endpoints{state="unhealthy"}` counts it), an endpoint whose port is closed, one
that accepts and never answers (fails by timeout), a `tls:` cluster checked over TLS with the pools'
identity check, the checker's task retired by a reload and by stop, and `sidecar validate` refusing bad
settings with the key named. Intervals are 100 ms and every wait is bounded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.integration.admin_client import admin_json, endpoint_view, metric
from tests.integration.raw import RawRequest, RawUpstream, outbound_config, response
from tests.integration.test_mtls_outbound import TlsUpstream, tls_config
from tests.integration.upstreams import Upstream, start_upstream
from tests.pki import CLIENT_ID, Pki, make_pki, upstream_context

REPO = Path(__file__).resolve().parents[2]
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)
# On asyncio's loop and on uvloop, which the sidecar runs on (tests/conftest.py): checks open their own
# connections, TLS ones included.
LOOPS = ("asyncio", "uvloop")
# The timeout as long as the interval: a loaded test machine must not fail a check by accident.
CHECK = "health_check: {path: /healthz, interval: 100ms, timeout: 100ms, unhealthy_threshold: 2, healthy_threshold: 2}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Switchable:
    """An aiohttp upstream whose /healthz answers `health` (200 or 503); other paths answer its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        self.checks: list[web.Request] = []
        self.upstream: Upstream | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/healthz":
            self.checks.append(request)
            return web.Response(status=self.health, text="health")
        return web.Response(text=self.name)

    async def start(self) -> Switchable:
        self.upstream = await start_upstream(self.handle, self.name)
        return self

    @property
    def address(self) -> str:
        assert self.upstream is not None
        return self.upstream.address


async def eventually(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll `condition` until it holds; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def state_is(running: Any, address: str, state: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool((await endpoint_view(running, address))["state"] == state)
    return check


async def served_by(url: str, count: int) -> Counter[str]:
    """Which upstream answered each of `count` GETs (all must be 200)."""
    names: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        for _ in range(count):
            async with session.get(url) as reply:
                assert reply.status == 200
                names[await reply.text()] += 1
    return names


async def health_view(running: Any) -> dict[str, Any]:
    clusters = (await admin_json(running, "/clusters"))["clusters"]
    [cluster] = [c for c in clusters if c["name"] == "backend"]
    return cluster["health_check"]  # type: ignore[no-any-return]


async def test_a_failing_endpoint_leaves_the_balancer_until_it_passes_again(sidecar: Any) -> None:
    good, flaky = await Switchable("good").start(), await Switchable("flaky").start()
    try:
        running = await sidecar(outbound_config([good.address, flaky.address], cluster_extra=CHECK))
        assert len(checker_tasks()) == 1
        await eventually(lambda: _checked(good, flaky))
        assert await served_by(running.url("/x"), 10) == {"good": 5, "flaky": 5}
        check = flaky.checks[0]
        assert check.method == "GET" and check.version == (1, 1)
        assert check.headers["Host"] == flaky.address
        assert check.headers["User-Agent"] == "horizon-sidecar-health-check"
        assert check.headers["Connection"] == "close"

        flaky.health = 503
        await eventually(state_is(running, flaky.address, "unhealthy"))
        view = await endpoint_view(running, flaky.address)
        assert view["health"] == "unhealthy"
        assert await served_by(running.url("/x"), 10) == {"good": 10}
        assert await metric(running, "sidecar_endpoints", cluster="backend", state="unhealthy") == 1
        assert await metric(running, "sidecar_endpoints", cluster="backend", state="healthy") == 1
        checks = await health_view(running)
        assert {k: checks[k] for k in ("path", "interval_seconds", "timeout_seconds", "healthy_threshold",
                                       "unhealthy_threshold")} == {
            "path": "/healthz", "interval_seconds": 0.1, "timeout_seconds": 0.1, "healthy_threshold": 2,
            "unhealthy_threshold": 2}
        flaky_checks = checks["endpoints"][flaky.address]
        assert flaky_checks["last"] == "fail" and flaky_checks["last_failure"] == "status 503"
        assert flaky_checks["consecutive_failures"] >= 2

        flaky.health = 200
        await eventually(state_is(running, flaky.address, "ready"))
        assert (await health_view(running))["endpoints"][flaky.address]["consecutive_passes"] >= 2
        assert await served_by(running.url("/x"), 10) == {"good": 5, "flaky": 5}
        assert await metric(running, "sidecar_endpoints", cluster="backend", state="unhealthy") == 0
        await running.app.drain_and_stop()
        assert checker_tasks() == []  # stopping cancels it
    finally:
        for upstream in (good, flaky):
            assert upstream.upstream is not None
            await upstream.upstream.stop()


async def _checked(*upstreams: Switchable) -> bool:
    return all(u.checks for u in upstreams)


async def test_an_endpoint_whose_port_is_closed_is_unhealthy(sidecar: Any) -> None:
    good = await Switchable("good").start()
    closed = f"127.0.0.1:{free_port()}"
    try:
        running = await sidecar(outbound_config([good.address, closed], cluster_extra=CHECK))
        await eventually(state_is(running, closed, "unhealthy"))
        assert (await health_view(running))["endpoints"][closed]["last_failure"] == "connect refused"
        assert await served_by(running.url("/x"), 6) == {"good": 6}
    finally:
        assert good.upstream is not None
        await good.upstream.stop()


def checker_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "health check cluster backend" and not t.done()]


async def test_a_reload_without_health_check_retires_the_checker(sidecar: Any,
                                                                 write_config: Callable[[str], Path]) -> None:
    good = await Switchable("good").start()
    closed = f"127.0.0.1:{free_port()}"
    try:
        running = await sidecar(outbound_config([good.address, closed], cluster_extra=CHECK))
        assert len(checker_tasks()) == 1
        await eventually(state_is(running, closed, "unhealthy"))
        write_config(outbound_config([good.address, closed]))
        assert await running.app.reload()
        await asyncio.sleep(0)
        assert checker_tasks() == []
        assert "health_check" not in (await admin_json(running, "/clusters"))["clusters"][0]
        assert (await endpoint_view(running, closed))["state"] == "ready"  # a new cluster, nothing checks it
    finally:
        assert good.upstream is not None
        await good.upstream.stop()


async def test_a_health_endpoint_that_never_answers_fails_by_timeout(sidecar: Any) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # reads the check, answers nothing, until the checker gives up and closes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    mute = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    good = await Switchable("good").start()
    try:
        running = await sidecar(outbound_config([good.address, mute], cluster_extra=CHECK))
        await eventually(state_is(running, mute, "unhealthy"))
        assert accepted  # it connected: the failure is the timeout, not the connect
        assert (await health_view(running))["endpoints"][mute]["last_failure"] == "no answer within 0.1s"
    finally:
        server.close()
        for writer in accepted:
            writer.close()
        assert good.upstream is not None
        await good.upstream.stop()


async def test_a_tls_cluster_is_checked_over_tls_with_the_pools_identity_check(sidecar: Any, pki: Pki) -> None:
    health = {"status": 200}

    async def handler(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        if request.target == b"/healthz":
            writer.write(response(health["status"], b"health"))
        else:
            writer.write(response(200, b"tls"))

    upstream = await TlsUpstream(upstream_context(pki), handler).start()
    impostor = await TlsUpstream(upstream_context(pki, "impostor"), handler).start()
    try:
        running = await sidecar(tls_config([upstream.address, impostor.address], pki, cluster_extra=CHECK))
        # The impostor's identity is refused by the same check the pools run: unhealthy, never asked.
        await eventually(state_is(running, impostor.address, "unhealthy"))
        assert "is not the expected" in (await health_view(running))["endpoints"][impostor.address]["last_failure"]
        assert impostor.requests == []
        # The real upstream saw the checks over TLS, with the sidecar's client certificate.
        await eventually(lambda: _asked(upstream))
        assert upstream.peers[0][0] == CLIENT_ID
        assert (await endpoint_view(running, upstream.address))["state"] == "ready"
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
            for _ in range(4):
                async with session.get(running.url("/x")) as reply:
                    assert (reply.status, await reply.read()) == (200, b"tls")
        health["status"] = 503
        await eventually(state_is(running, upstream.address, "unhealthy"))
    finally:
        await upstream.stop()
        await impostor.stop()


async def _asked(upstream: RawUpstream) -> bool:
    return any(r.target == b"/healthz" and r.header(b"user-agent") == b"horizon-sidecar-health-check"
               for r in upstream.requests)


@pytest.mark.parametrize(("settings", "key", "says"), [
    ("{path: healthz}", "clusters[0].health_check.path", "path must start with '/'"),
    ("{path: /healthz, interval: 0s}", "clusters[0].health_check.interval", "must be more than 0"),
])
def test_validate_refuses_bad_health_check_settings_naming_the_key(tmp_path: Path, settings: str, key: str,
                                                                    says: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("clusters:\n"
                    "  - name: c\n"
                    "    endpoints: [\"127.0.0.1:8080\"]\n"
                    f"    health_check: {settings}\n")
    result = subprocess.run([sys.executable, "-m", "proxy", "validate", "-c", str(path)], capture_output=True,
                            text=True, timeout=30, cwd=REPO)
    assert result.returncode == 1
    assert f"{path}:4: {key}: {says}" in result.stderr


class H2OnlyUpstream(asyncio.Protocol):
    """An HTTP/2-only server (prior knowledge, the `h2` package): /healthz answers its server's `health`, other
    paths its name; anything but the HTTP/2 preface closes the connection (as a gRPC server does)."""

    def __init__(self, server: H2Only) -> None:
        import h2.config
        import h2.connection

        self.server = server
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        import h2.events
        import h2.exceptions

        assert self.transport is not None
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.server.refused += 1
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                fields = dict(event.headers)
                if fields[b":path"] == b"/healthz":
                    self.server.checks.append(fields)
                    status, body = self.server.health, b"health"
                else:
                    status, body = 200, self.server.name.encode()
                self.conn.send_headers(event.stream_id, [(b":status", b"%d" % status)])
                self.conn.send_data(event.stream_id, body, end_stream=True)
        self.transport.write(self.conn.data_to_send())


class H2Only:
    def __init__(self, name: str) -> None:
        self.name = name
        self.health = 200
        self.checks: list[dict[bytes, bytes]] = []
        self.refused = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> H2Only:
        self.server = await asyncio.get_running_loop().create_server(lambda: H2OnlyUpstream(self), "127.0.0.1", 0)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def test_an_http2_cluster_is_checked_over_http2(sidecar: Any) -> None:
    """A `protocol: http2` cluster of HTTP/2-only servers (a gRPC service's kind) is checked in HTTP/2: the
    check passes while /healthz answers 200, a 503 takes that endpoint out, a 200 puts it back."""
    good, flaky = await H2Only("good").start(), await H2Only("flaky").start()
    try:
        running = await sidecar(outbound_config([good.address, flaky.address],
                                                cluster_extra=f"protocol: http2\n        {CHECK}"))
        await eventually(lambda: _async(len(good.checks) >= 2 and len(flaky.checks) >= 2))
        assert (await endpoint_view(running, flaky.address))["state"] == "ready"
        check = flaky.checks[0]
        assert check[b":method"] == b"GET" and check[b":scheme"] == b"http"
        assert check[b":authority"] == flaky.address.encode()
        assert check[b"user-agent"] == b"horizon-sidecar-health-check"
        assert good.refused == flaky.refused == 0  # never an HTTP/1.1 request
        assert await served_by(running.url("/x"), 10) == {"good": 5, "flaky": 5}

        flaky.health = 503
        await eventually(state_is(running, flaky.address, "unhealthy"))
        assert (await health_view(running))["endpoints"][flaky.address]["last_failure"] == "status 503"
        assert await served_by(running.url("/x"), 6) == {"good": 6}
        flaky.health = 200
        await eventually(state_is(running, flaky.address, "ready"))
    finally:
        for server in (good, flaky):
            assert server.server is not None
            server.server.close()


async def _async(value: bool) -> bool:
    return value


class GrpcHealth:
    """A grpcio server (its own threads) with gRPC's health service for `svc.Echo`, answering `status` (1
    SERVING, 2 NOT_SERVING), and an echo method; every plain HTTP GET it resets."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc

        self.status = 1
        self.requests: list[bytes] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])

        def check(request: bytes, context: Any) -> bytes:
            self.requests.append(request)
            if request != b"\x0a\x08svc.Echo":
                context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
            return b"\x08" + bytes((self.status,))

        def say(request: bytes, _context: Any) -> bytes:
            return b"echo:" + request

        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler("grpc.health.v1.Health",
                                                 {"Check": grpc.unary_unary_rpc_method_handler(check)}),
            grpc.method_handlers_generic_handler("svc.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}),
        ))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def _no_grpc_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # grpcio honours http_proxy; the tests talk to 127.0.0.1 directly.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("_no_grpc_proxy")
async def test_grpc_health_checking_of_a_grpc_server(sidecar: Any) -> None:
    """`health_check: {grpc_service: svc.Echo}` on a `protocol: http2` cluster of grpcio servers: SERVING
    passes, NOT_SERVING takes the endpoint out, SERVING again puts it back."""
    good, flaky = GrpcHealth(), GrpcHealth()
    check = CHECK.replace("path: /healthz", "grpc_service: svc.Echo")
    try:
        running = await sidecar(outbound_config([good.address, flaky.address],
                                                cluster_extra=f"protocol: http2\n        {check}"))
        await eventually(lambda: _async(len(good.requests) >= 2 and len(flaky.requests) >= 2))
        assert (await endpoint_view(running, flaky.address))["state"] == "ready"
        assert flaky.requests[0] == b"\x0a\x08svc.Echo"  # a HealthCheckRequest for the service
        flaky.status = 2  # NOT_SERVING
        await eventually(state_is(running, flaky.address, "unhealthy"))
        assert (await health_view(running))["endpoints"][flaky.address]["last_failure"] == "gRPC health NOT_SERVING"
        assert (await health_view(running))["grpc_service"] == "svc.Echo"
        flaky.status = 1
        await eventually(state_is(running, flaky.address, "ready"))
    finally:
        good.server.stop(grace=None)
        flaky.server.stop(grace=None)


@pytest.mark.usefixtures("_no_grpc_proxy")
async def test_a_grpc_health_check_of_an_unknown_service_fails_with_its_status(sidecar: Any) -> None:
    server = GrpcHealth()
    check = CHECK.replace("path: /healthz", "grpc_service: other")
    try:
        running = await sidecar(outbound_config([server.address], cluster_extra=f"protocol: http2\n        {check}"))
        await eventually(state_is(running, server.address, "unhealthy"))
        failure = (await health_view(running))["endpoints"][server.address]["last_failure"]
        assert failure == "grpc-status 5: unknown service", failure
    finally:
        server.server.stop(grace=None)

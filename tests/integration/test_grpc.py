"""gRPC callers through real sockets: a grpcio client talking HTTP/2 (prior knowledge) to the sidecar gets
gRPC-shaped answers from the sidecar itself, with the statuses the issue names (12 for no route, 14 when
the cluster cannot be reached, 8 when rate limited, 4 when its grpc-timeout passes first), each counted in
sidecar_grpc_requests_total and carrying Proxy-Status.

(Calls that reach a gRPC server need HTTP/2 towards upstreams, the next part of issue 19.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from aiohttp import web

from proxy.resilience.grpc import parse_grpc_timeout
from tests.integration.admin_client import metric
from tests.integration.upstreams import start_upstream


def config(upstream: str, route_extra: str = "") -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - name: echo
            match: {{prefix: /svc.Echo/}}
            cluster: backend
            {route_extra}
    clusters:
      - name: backend
        connect_timeout: 500ms
        endpoints: ["{upstream}"]
    """


def call(port: int, method: str, timeout: float | None = 5.0) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """A unary call with raw bytes (no generated stubs); its status code, details and trailing metadata."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Callable[..., Any] = channel.unary_unary(method)
        try:
            stub(b"\x00", timeout=timeout)
        except grpc.RpcError as error:
            trailing = {key: value for key, value in (error.trailing_metadata() or ())}  # type: ignore[attr-defined]
            return error.code(), error.details(), trailing  # type: ignore[attr-defined]
    raise AssertionError("the call succeeded")


async def in_thread(port: int, method: str, timeout: float | None = 5.0) -> tuple[grpc.StatusCode, str, dict]:
    return await asyncio.to_thread(call, port, method, timeout)


async def test_no_route_is_unimplemented(sidecar: Any) -> None:
    running = await sidecar(config("127.0.0.1:1"))
    code, details, trailing = await in_thread(running.port(), "/other.Service/Call")
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert "destination_not_found" in details
    assert "error=destination_not_found" in trailing.get("proxy-status", "")
    assert await metric(running, "sidecar_grpc_requests_total", grpc_status="12") == 1


async def test_an_unreachable_cluster_is_unavailable(sidecar: Any) -> None:
    running = await sidecar(config("127.0.0.1:1"))
    code, details, _ = await in_thread(running.port(), "/svc.Echo/Say")
    assert code is grpc.StatusCode.UNAVAILABLE and "connection_refused" in details
    assert await metric(running, "sidecar_grpc_requests_total", route="echo", grpc_status="14") == 1


async def test_rate_limited_is_resource_exhausted(sidecar: Any) -> None:
    running = await sidecar(config("127.0.0.1:1", "rate_limit: {requests_per_second: 1, burst: 1}"))
    await in_thread(running.port(), "/svc.Echo/Say")  # takes the one token (and fails upstream)
    code, details, _ = await in_thread(running.port(), "/svc.Echo/Say")
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "http_request_denied" in details


async def test_the_route_timeout_answers_deadline_exceeded_and_the_upstream_hears_the_time_left(
        sidecar: Any) -> None:
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(release.wait(), 10)
        return web.Response()

    upstream = await start_upstream(silent)
    try:
        running = await sidecar(config(upstream.address, "timeout: 300ms"))
        code, details, _ = await in_thread(running.port(), "/svc.Echo/Say", timeout=5.0)
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED and "http_response_timeout" in details
        assert await metric(running, "sidecar_grpc_requests_total", grpc_status="4") == 1
        # The client allowed 5 s (grpc-timeout), the route 300 ms: the upstream was told the lesser, as left.
        [request] = upstream.requests
        left = parse_grpc_timeout(request.headers["grpc-timeout"].encode())
        assert left is not None and 0.1 < left <= 0.3
    finally:
        release.set()
        await upstream.stop()


async def test_a_shorter_grpc_timeout_caps_the_route_timeout(sidecar: Any) -> None:
    release = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(release.wait(), 10)
        return web.Response()

    upstream = await start_upstream(silent)
    try:
        running = await sidecar(config(upstream.address, "timeout: 30s"))
        code, _, _ = await in_thread(running.port(), "/svc.Echo/Say", timeout=1.0)
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        [request] = upstream.requests
        left = parse_grpc_timeout(request.headers["grpc-timeout"].encode())
        assert left is not None and 0.5 < left <= 1.0
    finally:
        release.set()
        await upstream.stop()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # grpcio honours http_proxy; the tests talk to 127.0.0.1 directly.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        monkeypatch.delenv(name, raising=False)

"""Routing a mesh end to end: virtual hosts, HTTP-proxy mode (curl -x / HTTP_PROXY), matchers on
methods, query and absent headers, header rules, rewrites, weighted splits, IPv6; real sockets and
real clients (aiohttp, curl, raw sockets)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.integration.upstreams import Upstream, start_upstream


async def fetch(url: str, method: str = "GET", **kwargs: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, **kwargs) as response:
            text = await response.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            return response.status, response.headers.copy(), body


async def curl(*args: str, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec("curl", "-s", "--max-time", "5", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode()


@pytest.fixture
async def two_services() -> Any:
    campaign = await start_upstream(name="campaign")
    payment = await start_upstream(name="payment")
    yield campaign, payment
    await campaign.stop()
    await payment.stop()


def mesh_config(campaign: Upstream, payment: Upstream, extra_routes: str = "") -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          {extra_routes}
          - name: campaign
            match: {{host: campaign-service, prefix: /}}
            cluster: campaign
          - name: payment
            match: {{host: "*.payment.svc", prefix: /}}
            cluster: payment
    clusters:
      - name: campaign
        endpoints: ["{campaign.address}"]
      - name: payment
        endpoints: ["{payment.address}"]
    """


async def test_virtual_hosts_route_by_host_case_insensitively_and_ignore_port(sidecar, two_services) -> None:
    campaign, payment = two_services
    running = await sidecar(mesh_config(campaign, payment))
    status, _, body = await fetch(running.url("/x"), headers={"Host": "Campaign-Service:8080"})
    assert status == 200 and body["name"] == "campaign"
    status, _, body = await fetch(running.url("/y"), headers={"Host": "api.payment.svc"})
    assert status == 200 and body["name"] == "payment"
    status, headers, _ = await fetch(running.url("/z"), headers={"Host": "payment.svc"})
    assert status == 404  # a leading *. matches subdomains, not the bare domain
    assert headers["Proxy-Status"].startswith("sidecar; error=destination_not_found")


async def test_http_proxy_mode_with_curl_x_and_http_proxy_env(sidecar, two_services) -> None:
    campaign, payment = two_services
    running = await sidecar(mesh_config(campaign, payment))
    proxy = f"http://127.0.0.1:{running.port()}"
    body = json.loads(await curl("-x", proxy, "http://campaign-service/api/x?y=1"))
    assert body["name"] == "campaign"
    assert body["path"] == "/api/x" and body["query"] == "y=1"  # origin-form upstream
    assert body["headers"]["host"] == "campaign-service"
    body = json.loads(await curl("http://orders.payment.svc:9000/pay", env={"http_proxy": proxy, "PATH": "/usr/bin"}))
    assert body["name"] == "payment"
    assert body["headers"]["host"] == "orders.payment.svc:9000"


async def test_absolute_form_on_a_raw_socket_goes_upstream_in_origin_form(sidecar) -> None:
    from tests.integration.raw import RawUpstream

    seen: list[bytes] = []

    async def answer(request: Any, writer: asyncio.StreamWriter) -> None:
        seen.append(request.target)
        seen.append(request.header(b"host") or b"")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    upstream = await RawUpstream(answer).start()
    running = await sidecar(f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes: [{{name: c, match: {{host: campaign-service}}, cluster: c}}]
    clusters: [{{name: c, endpoints: ["127.0.0.1:{upstream.port}"]}}]
    """)
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port())
    writer.write(b"GET http://Campaign-Service/api/v1/x?q=1 HTTP/1.1\r\nHost: ignored\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert seen == [b"/api/v1/x?q=1", b"Campaign-Service"]
    writer.close()
    await upstream.stop()


async def test_connect_gets_405_and_a_closed_connection(sidecar, two_services) -> None:
    campaign, payment = two_services
    running = await sidecar(mesh_config(campaign, payment))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port())
    writer.write(b"CONNECT campaign-service:443 HTTP/1.1\r\nHost: campaign-service:443\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    assert response.startswith(b"HTTP/1.1 405")
    assert b"proxy-status: sidecar; error=http_request_error" in response.lower()
    writer.close()
    assert not campaign.requests


async def test_methods_query_and_absent_header_matchers(sidecar, two_services) -> None:
    campaign, payment = two_services
    routes = """- name: debug-get
            match:
              prefix: /api
              methods: [GET]
              query: {debug: {exact: "1"}, trace: {present: false}}
              headers: {x-internal: {present: false}}
            cluster: payment
    """
    running = await sidecar(mesh_config(campaign, payment, routes).replace(
        "match: {host: campaign-service, prefix: /}", "match: {prefix: /}"))
    assert (await fetch(running.url("/api?debug=1")))[2]["name"] == "payment"
    assert (await fetch(running.url("/api?debug=1"), method="POST"))[2]["name"] == "campaign"
    assert (await fetch(running.url("/api?debug=2")))[2]["name"] == "campaign"
    assert (await fetch(running.url("/api?debug=1&trace")))[2]["name"] == "campaign"
    assert (await fetch(running.url("/api?debug=1"), headers={"x-internal": "y"}))[2]["name"] == "campaign"


async def test_header_rules_and_rewrite(sidecar, two_services) -> None:
    campaign, payment = two_services
    routes = """- name: legacy
            match: {prefix: /legacy/}
            rewrite: {prefix: /api/v2/, host: campaign-v2.default.svc}
            headers:
              request: {remove: [x-debug], set: {x-canary: "true"}, add: {x-added: one}}
              response: {remove: [server], set: {x-route: legacy}}
            cluster: campaign
    """
    running = await sidecar(mesh_config(campaign, payment, routes))
    status, headers, body = await fetch(running.url("/legacy/orders?id=3"),
                                        headers={"x-debug": "1", "x-canary": "false", "x-added": "zero"})
    assert status == 200
    assert body["path"] == "/api/v2/orders" and body["query"] == "id=3"
    assert body["headers"]["host"] == "campaign-v2.default.svc"
    assert "x-debug" not in body["headers"]
    assert body["headers"]["x-canary"] == "true"
    assert body["headers"]["x-added"] == "zero, one"  # add appends (aiohttp joins repeated headers)
    assert headers["x-route"] == "legacy" and "Server" not in headers


async def test_weighted_split_follows_weights(sidecar, two_services) -> None:
    campaign, payment = two_services
    routes = """- name: split
            match: {prefix: /split}
            split: [{cluster: campaign, weight: 3}, {cluster: payment, weight: 1}]
    """
    running = await sidecar(mesh_config(campaign, payment, routes))
    counts: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(400):
            async with session.get(running.url("/split")) as response:
                counts[(await response.json())["name"]] += 1
    assert 250 <= counts["campaign"] <= 350, counts


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_ipv6_listener_and_endpoint(sidecar) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured here")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nipv6")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    running = await sidecar(f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "[::1]:0"
        routes: [{{name: all, match: {{prefix: /}}, cluster: v6}}]
    clusters: [{{name: v6, endpoints: ["[::1]:{port}"]}}]
    """)
    out = await curl("-g", f"http://[::1]:{running.port()}/")
    assert out == "ipv6"
    server.close()

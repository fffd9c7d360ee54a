"""End-to-end: a request through the sidecar to a real upstream, with aiohttp and curl as clients."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.integration.upstreams import start_upstream


def config(upstream: str) -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - name: all
            match: {{prefix: /}}
            cluster: backend
    clusters:
      - name: backend
        endpoints: ["{upstream}"]
    """


async def test_request_reaches_upstream_with_forwarding_headers(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(config(upstream.address))
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url("/hello?x=1"), headers={"x-request-id": "abc"}) as response:
            assert response.status == 200
            data = await response.json()
            assert response.headers["x-request-id"] == "abc"
    assert data["path"] == "/hello"
    assert data["query"] == "x=1"
    assert data["headers"]["x-request-id"] == "abc"
    assert data["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert data["headers"]["x-forwarded-proto"] == "http"
    assert data["headers"]["traceparent"].startswith("00-")
    await upstream.stop()


async def test_curl_through_the_sidecar(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(config(upstream.address))
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-i", running.url("/curl"), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    text = out.decode()
    assert text.startswith("HTTP/1.1 200")
    assert "x-request-id:" in text.lower()
    await upstream.stop()

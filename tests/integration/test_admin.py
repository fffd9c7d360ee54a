"""The admin endpoints of a running sidecar, read with a real HTTP client after real traffic."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.integration.upstreams import start_upstream
from tests.pki import Pki, spiffe


def config(upstream: str) -> str:
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        routes:
          - name: api
            match: {{prefix: /api}}
            cluster: backend
    clusters:
      - name: backend
        endpoints: ["{upstream}"]
    """


async def test_metrics_count_requests_by_route_cluster_and_code(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(config(upstream.address))
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(running.url("/api/x")) as response:
                assert response.status == 200
        async with session.get(running.url("/nothing-here")) as response:
            assert response.status == 404
            assert response.headers["proxy-status"].startswith("sidecar; error=destination_not_found")
        async with session.get(running.admin_url("/metrics")) as response:
            text = await response.text()
    assert 'sidecar_requests_total{cluster="backend",code="200",listener="outbound",route="api"} 3.0' in text
    assert 'sidecar_requests_total{cluster="",code="404",listener="outbound",route=""} 1.0' in text
    assert 'sidecar_request_duration_seconds_count{cluster="backend",listener="outbound",route="api"} 3.0' in text
    assert 'sidecar_downstream_connections{listener="outbound"}' in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    await upstream.stop()


async def test_clusters_config_dump_ready_and_shutdown(sidecar) -> None:  # type: ignore[no-untyped-def]
    upstream = await start_upstream()
    running = await sidecar(config(upstream.address))
    async with aiohttp.ClientSession() as session:
        async with session.get(running.url("/api/warm")) as response:
            assert response.status == 200
        async with session.get(running.admin_url("/clusters")) as response:
            clusters = await response.json()
        backend = clusters["clusters"][0]
        assert backend["name"] == "backend"
        assert backend["endpoints"][0]["address"] == upstream.address
        assert backend["endpoints"][0]["requests"] == 1
        assert backend["endpoints"][0]["idle_connections"] == 1
        async with session.get(running.admin_url("/config_dump")) as response:
            dump = await response.json()
        assert dump["version_hash"] == running.app.loaded.version_hash
        assert dump["clusters"][0]["name"] == "backend"
        async with session.get(running.admin_url("/live")) as response:
            assert response.status == 200
        async with session.get(running.admin_url("/ready")) as response:
            assert response.status == 200
        async with session.post(running.admin_url("/shutdown")) as response:
            assert response.status == 200
        async with session.get(running.admin_url("/ready")) as response:
            assert response.status == 503
            assert "draining" in await response.text()
    await upstream.stop()


async def test_admin_refuses_dns_names_and_state_changes_from_browsers(sidecar) -> None:  # type: ignore[no-untyped-def]
    running = await sidecar(config("127.0.0.1:9"))  # a static endpoint is known at once: /ready is 200
    root = logging.getLogger()
    level = root.level
    try:
        async with aiohttp.ClientSession() as session:
            for host, expected in (("evil.example", 403), ("evil.example:15000", 403), ("127.0.0.1:15000", 200),
                                   ("[::1]:15000", 200), ("localhost:15000", 200), ("10.1.2.3", 200)):
                for path in ("/metrics", "/ready", "/config_dump"):
                    async with session.get(running.admin_url(path), headers={"Host": host}) as response:
                        assert response.status == expected, (host, path)
            origin = {"Origin": "http://evil.example"}
            async with session.post(running.admin_url("/logging?level=debug"), headers=origin) as response:
                assert response.status == 403
            assert root.level == level
            async with session.post(running.admin_url("/shutdown"), headers=origin) as response:
                assert response.status == 403
            async with session.get(running.admin_url("/ready")) as response:
                assert response.status == 200  # not draining
            assert not running.app.draining
    finally:
        root.setLevel(level)


async def test_config_dump_redacts_header_values_and_key_files(sidecar, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pki = Pki(tmp_path / "pki")  # the listener's TLS is built: real material, under the names the config uses
    pki.leaf("c", spiffe("api"))
    for name, source in (("c.pem", "c.pem"), ("k.pem", "c-key.pem"), ("ca.pem", "ca/ca.pem")):
        (tmp_path / name).write_bytes((pki.root / source).read_bytes())
    running = await sidecar("""
    admin: {address: "127.0.0.1:0", config_dump: {public_headers: [X-Version]}}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        tls: {cert: c.pem, key: k.pem, ca: ca.pem}
        routes:
          - name: api
            match:
              prefix: /api
              headers: {x-auth: {exact: s3cret-auth}, x-version: {exact: v2}}
              query: {token: {prefix: q-t0ken}}
            cluster: backend
            headers:
              request:
                set: {x-upstream-pass: pa55word}
                add: {x-basic: "Basic dXNlcjpwYXNz"}
              response: {set: {X-Version: v2}}
    clusters:
      - name: backend
        endpoints: ["127.0.0.1:9"]
        tls: {cert: c.pem, key: k.pem, ca: ca.pem}
    """)
    async with aiohttp.ClientSession() as session, session.get(running.admin_url("/config_dump")) as response:
        assert response.status == 200
        body = await response.text()
    for secret in ("s3cret-auth", "q-t0ken", "pa55word", "dXNlcjpwYXNz", "k.pem"):
        assert secret not in body
    dump = json.loads(body)
    assert next(iter(dump)) == "version_hash"
    route = dump["listeners"][0]["routes"][0]
    assert route["headers"]["request"]["set"] == {"x-upstream-pass": "[redacted]"}
    assert route["match"]["headers"] == {
        "x-auth": {"exact": "[redacted]", "prefix": None, "regex": None, "present": None},
        "x-version": {"exact": "v2", "prefix": None, "regex": None, "present": None}}
    assert route["headers"]["response"]["set"] == {"X-Version": "v2"}
    assert dump["clusters"][0]["tls"]["key"] == "[redacted]" and dump["clusters"][0]["tls"]["cert"].endswith("c.pem")

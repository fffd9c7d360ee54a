"""The edge and the route stage with a caller identity (what a TLS listener's connection gives every request):
`x-forwarded-client-cert`, routes chosen by `match.peer_identity`, rate limits keyed by identity, the record."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.stages.fakes import COMPILED, FakeRequest, Harness, ok

pytestmark = pytest.mark.skipif(COMPILED, reason="fake streams subclass native classes (interpreted pass only)")

WEB = "spiffe://cluster.local/ns/shop/sa/web"
BATCH = "spiffe://cluster.local/ns/shop/sa/batch"
XFCC = b"x-forwarded-client-cert"


def mtls_config(tmp_path: Path) -> str:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("not read by the request path\n")
    return f"""
admin: {{address: "127.0.0.1:0"}}
listeners:
  - name: in
    address: "127.0.0.1:0"
    tls: {{cert: {tmp_path}/cert.pem, key: {tmp_path}/key.pem, ca: {tmp_path}/ca.pem, require_client_cert: true}}
    routes:
      - name: batch
        match: {{prefix: /, peer_identity: {{exact: "{BATCH}"}}}}
        cluster: backend
        rate_limit: {{requests_per_second: 1, burst: 1}}
      - name: shop
        match: {{prefix: /, peer_identity: {{prefix: "spiffe://cluster.local/ns/shop/"}}}}
        cluster: backend
        rate_limit: {{requests_per_second: 1, burst: 2, key: peer_identity}}
clusters:
  - name: backend
    endpoints: ["10.0.0.1:80"]
"""


async def serve_as(harness: Harness, identity: str, client_cert: bytes = b"",
                   headers: list[tuple[bytes, bytes]] | None = None) -> FakeRequest:
    request = harness.start("/", headers=headers)
    # What the codec copies from its connection (set by the TLS acceptor) before the handler runs.
    request.peer_identity = identity
    request.forwarded_client_cert = client_cert
    assert request.task is not None
    await request.task
    return request


async def test_the_edge_replaces_a_client_sent_client_cert_with_the_connections(tmp_path: Path) -> None:
    harness = Harness(mtls_config(tmp_path))
    upstream = ok()
    harness.seed("backend", upstream)
    own = f"By=spiffe://cluster.local/ns/shop/sa/api;Hash=00ff;URI={WEB}".encode()
    await serve_as(harness, WEB, own, headers=[(XFCC, b"URI=spiffe://cluster.local/ns/shop/sa/admin")])
    sent = upstream.sent[0][0].headers
    assert [value for name, value in sent if name == XFCC] == [own]
    assert (b"x-forwarded-proto", b"https") in sent
    assert harness.last["peer_identity"] == WEB


async def test_routes_and_rate_limits_follow_the_callers_identity(tmp_path: Path) -> None:
    harness = Harness(mtls_config(tmp_path))
    harness.seed("backend", *(ok() for _ in range(4)))
    first = await serve_as(harness, BATCH)
    assert first.response is not None and harness.last["route"] == "batch"
    second = await serve_as(harness, BATCH)
    assert second.reply is not None and second.reply.head.status == 429  # batch's route has one bucket of 1
    for _ in range(2):
        await serve_as(harness, WEB)
        assert harness.last["route"] == "shop" and harness.last["status"] == 200
    await serve_as(harness, WEB)
    assert harness.last["status"] == 429  # web's own bucket (burst 2) is empty ...
    other = await serve_as(harness, "spiffe://cluster.local/ns/shop/sa/cart")
    assert other.response is not None and other.response.status == 200  # ... cart's is not
    nobody = await serve_as(harness, "")
    assert nobody.reply is not None and nobody.reply.head.status == 404  # no identity: no route matches

"""The route stage's authorization slot, with fake streams: `authz` (the peer identity), then `api_key`, both
before the rate limit; a refused request reaches no upstream and is recorded with its cause."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proxy.filters.apikey import ApiKeyCheck
from proxy.filters.authz import AuthzCheck
from proxy.filters.check import AllChecks
from proxy.local_reply import Cause
from proxy.message import Headers
from proxy.telemetry.record import RecordSink, RequestRecord
from tests.unit.stages.fakes import COMPILED, FakeRequest, FakeUpstream, Harness, counter, ok, one_route

pytestmark = pytest.mark.skipif(COMPILED, reason="fake streams subclass native classes (interpreted pass only)")

WEB = "spiffe://cluster.local/ns/default/sa/web"
AUTHZ = ("        authz:\n"
         "          allow_identities: [spiffe://cluster.local/ns/default/sa/*]\n"
         "          deny_identities: [spiffe://cluster.local/ns/default/sa/legacy-batch]\n")


def api_key(keys_file: Path) -> str:
    return f"        api_key: {{header: x-api-key, keys_file: {keys_file}}}\n"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(f"{hashlib.sha256(b'k-campaign').hexdigest()}: campaign-service\n")
    return path


class Clients(RecordSink):
    """The identity and API client each finished request's record names."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def record(self, request: RequestRecord) -> None:
        self.seen.append((request.peer_identity, request.api_client))


def harness_for(route: str) -> tuple[Harness, Clients, FakeUpstream]:
    harness = Harness(one_route(route))
    clients = Clients()
    harness.path.sinks = (*harness.path.sinks, clients)
    upstream = ok()
    harness.seed("backend", upstream)
    return harness, clients, upstream


async def serve(harness: Harness, identity: str = "", headers: Headers | None = None) -> FakeRequest:
    request = harness.start(headers=headers)
    request.peer_identity = identity  # as a TLS listener sets it, before the handler runs
    assert request.task is not None
    await request.task
    return request


def status(request: FakeRequest) -> int:
    if request.reply is not None:
        return request.reply.head.status
    assert request.response is not None
    return request.response.status


async def test_an_allowed_identity_is_served_and_recorded() -> None:
    harness, clients, upstream = harness_for(AUTHZ)
    request = await serve(harness, WEB)
    assert status(request) == 200 and len(upstream.sent) == 1
    assert clients.seen == [(WEB, "")]


@pytest.mark.parametrize("identity", ["", "spiffe://cluster.local/ns/default/sa/legacy-batch",
                                      "spiffe://other.local/ns/default/sa/web",
                                      "spiffe://cluster.local/ns/default/sa/web/extra"])
async def test_a_refused_identity_gets_403_and_reaches_no_upstream(identity: str) -> None:
    harness, clients, upstream = harness_for(AUTHZ)
    request = await serve(harness, identity)
    assert request.reply is not None and request.reply.head.status == 403
    assert request.reply.cause is Cause.AUTHZ_DENIED
    assert upstream.sent == []
    record = harness.last
    assert record["cause"] is Cause.AUTHZ_DENIED and record["cluster"] == "" and record["attempts"] == 0
    assert clients.seen == [(identity, "")]
    assert counter(harness, "sidecar_requests_total", route="api", cluster="", code="403") == 1


async def test_a_known_api_key_is_served_and_names_the_client(keys_file: Path) -> None:
    harness, clients, upstream = harness_for(api_key(keys_file))
    request = await serve(harness, headers=[(b"x-api-key", b"k-campaign")])
    assert status(request) == 200
    # The key goes upstream as it came (a header rule can remove it).
    assert (b"x-api-key", b"k-campaign") in upstream.sent[0][0].headers
    assert clients.seen == [("", "campaign-service")]


@pytest.mark.parametrize("headers", [[], [(b"x-api-key", b"wrong")]])
async def test_a_missing_or_unknown_api_key_gets_401_and_reaches_no_upstream(keys_file: Path,
                                                                            headers: Headers) -> None:
    harness, clients, upstream = harness_for(api_key(keys_file))
    request = await serve(harness, headers=headers)
    assert request.reply is not None and request.reply.head.status == 401
    assert request.reply.cause is Cause.API_KEY and harness.last["cause"] is Cause.API_KEY
    assert upstream.sent == [] and clients.seen == [("", "")]
    assert counter(harness, "sidecar_requests_total", route="api", cluster="", code="401") == 1


async def test_with_both_authz_and_api_key_both_must_pass_authz_first(keys_file: Path) -> None:
    harness, clients, upstream = harness_for(AUTHZ + api_key(keys_file))
    assert isinstance(harness.path.router.routes[0].authorization, AllChecks)
    good_key: Headers = [(b"x-api-key", b"k-campaign")]
    refused = await serve(harness, "", good_key)
    assert refused.reply is not None and refused.reply.cause is Cause.AUTHZ_DENIED  # authz answers first
    keyless = await serve(harness, WEB)
    assert keyless.reply is not None and keyless.reply.cause is Cause.API_KEY
    served = await serve(harness, WEB, good_key)
    assert status(served) == 200 and len(upstream.sent) == 1
    assert clients.seen[-1] == (WEB, "campaign-service")


async def test_authorization_runs_before_the_rate_limit(keys_file: Path) -> None:
    # One token: refused callers must not spend it.
    route = AUTHZ + api_key(keys_file) + "        rate_limit: {requests_per_second: 1, burst: 1}\n"
    harness, _, _ = harness_for(route)
    for _ in range(3):
        assert status(await serve(harness, "")) == 403
        assert status(await serve(harness, WEB, [(b"x-api-key", b"nope")])) == 401
    good: Headers = [(b"x-api-key", b"k-campaign")]
    assert status(await serve(harness, WEB, good)) == 200
    assert status(await serve(harness, WEB, good)) == 429
    assert counter(harness, "sidecar_rate_limited_total", route="api") == 1


async def test_a_route_without_authz_or_api_key_has_an_empty_slot(keys_file: Path) -> None:
    assert Harness(one_route()).path.router.routes[0].authorization is None
    assert isinstance(Harness(one_route(AUTHZ)).path.router.routes[0].authorization, AuthzCheck)
    assert isinstance(Harness(one_route(api_key(keys_file))).path.router.routes[0].authorization, ApiKeyCheck)

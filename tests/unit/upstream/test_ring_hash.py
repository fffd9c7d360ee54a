"""Ring hash: a key stays on one endpoint, about 1/N of keys move when an endpoint is added, an unavailable
owner passes its keys along the ring (and gets them back), the shares follow weight, and no key means a
random endpoint."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from proxy.clock import ManualClock
from proxy.config.model import ClusterConfig
from proxy.upstream.balancer import (
    HashPolicy,
    LeastRequest,
    PeakEwma,
    RingHash,
    RoundRobin,
    cookie_value,
    hash64,
    make_balancer,
)
from proxy.upstream.endpoint import DRAINING, Endpoint
from proxy.upstream.pool import PoolSettings
from tests.unit.heads import make_head
from tests.unit.upstream.test_balancer import make_endpoints, open_breaker

KEYS = [hash64(f"user-{n}".encode()) for n in range(10000)]


def owner(balancer: RingHash, key: int | None, tried: list[Endpoint] | None = None) -> str:
    picked = balancer.pick(tried, key)
    assert picked is not None
    return picked[0].address


def assignment(balancer: RingHash) -> list[str]:
    return [owner(balancer, key) for key in KEYS]


def test_hash64_is_stable() -> None:
    assert hash64(b"alice") == hash64(b"alice") != hash64(b"bob")
    assert 0 <= hash64(b"alice") < 2**64


async def test_a_key_stays_on_one_endpoint() -> None:
    clock = ManualClock()
    balancer = RingHash(make_endpoints(clock, 4), clock)
    for key in KEYS[:100]:
        assert len({owner(balancer, key) for _ in range(5)}) == 1
    # The same ring from a fresh build (another worker) gives the same answers.
    assert assignment(balancer)[:500] == assignment(RingHash(balancer.endpoints, clock))[:500]


async def test_shares_are_near_even_and_about_one_in_n_moves_when_one_is_added() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 4)
    before = RingHash(endpoints, clock)
    counts = Counter(assignment(before))
    assert all(1900 < count < 3100 for count in counts.values()), counts
    added = Endpoint("test", "10.0.0.5", 8080, PoolSettings(), clock)
    after = before.rebuild((*endpoints, added))
    moved = [(a, b) for a, b in zip(assignment(before), assignment(after), strict=True) if a != b]
    # 1/5 of the keys is 2000: only keys the new endpoint took move, and about that many.
    assert 1500 < len(moved) < 2500
    assert all(b == added.address for _, b in moved)


async def test_an_unavailable_owner_passes_its_keys_on_and_gets_them_back() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 3, breakers=True)
    balancer = RingHash(endpoints, clock)
    first = assignment(balancer)
    endpoints[0].ejected = True
    during = assignment(balancer)
    assert endpoints[0].address not in during
    assert all(a == b for a, b in zip(first, during, strict=True) if a != endpoints[0].address)
    endpoints[0].ejected = False
    assert assignment(balancer) == first
    endpoints[1].state = DRAINING
    endpoints[2].breaker = make_endpoints(clock, 1, breakers=True)[0].breaker  # fresh: no unreported tokens
    open_breaker(endpoints[2])
    assert set(assignment(balancer)[:200]) == {endpoints[0].address}


async def test_tried_owner_is_skipped_then_the_fallback() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 2)
    balancer = RingHash(endpoints, clock)
    key = KEYS[0]
    home = owner(balancer, key)
    tried = [e for e in endpoints if e.address == home]
    assert owner(balancer, key, tried) != home
    assert owner(balancer, key, list(endpoints)) == home  # all tried: the ring's first may retry


async def test_weight_scales_the_share_and_no_key_is_random() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 2)
    endpoints[0].weight = 3
    counts = Counter(assignment(RingHash(endpoints, clock)))
    assert 0.68 < counts[endpoints[0].address] / len(KEYS) < 0.82
    balancer = RingHash(endpoints, clock)
    random_picks = Counter(owner(balancer, None) for _ in range(200))
    assert len(random_picks) == 2
    assert RingHash((), clock).pick(None, KEYS[0]) is None


def test_hash_policy_keys_on_a_header_a_cookie_or_the_source_ip() -> None:
    head = make_head(headers=[(b"x-user-id", b"42"), (b"cookie", b"a=1; session=abc; b=2")])
    assert HashPolicy(header=b"x-user-id").key(head, b"10.1.1.1") == hash64(b"42")
    assert HashPolicy(header=b"x-other").key(head, b"10.1.1.1") is None
    assert HashPolicy(cookie=b"session").key(head, b"10.1.1.1") == hash64(b"abc")
    assert HashPolicy(cookie=b"sess").key(head, b"10.1.1.1") is None
    assert HashPolicy().key(head, b"10.1.1.1") == hash64(b"10.1.1.1")
    assert cookie_value([(b"cookie", b"x=1"), (b"cookie", b"session=z")], b"session") == b"z"


def cluster_config(balancer: object) -> ClusterConfig:
    return ClusterConfig.model_validate({"name": "c", "endpoints": ["127.0.0.1:1"], "load_balancer": balancer})


@pytest.mark.parametrize(("setting", "kind", "keyed"), [
    ("round_robin", RoundRobin, False),
    ("least_request", LeastRequest, False),
    ("peak_ewma", PeakEwma, False),
    ("ring_hash", RingHash, False),
    ({"ring_hash": {"header": "X-User-Id"}}, RingHash, True),
    ({"ring_hash": {"cookie": "session"}}, RingHash, True),
    ({"ring_hash": {"source_ip": True}}, RingHash, True),
])
def test_the_config_chooses_the_balancer(setting: object, kind: type, keyed: bool) -> None:
    balancer, policy = make_balancer(cluster_config(setting), ManualClock())
    assert type(balancer) is kind
    assert (policy is not None) == keyed
    if isinstance(setting, dict) and "header" in setting["ring_hash"]:
        assert policy is not None and policy.header == b"x-user-id"


@pytest.mark.parametrize("setting", [{"ring_hash": {}}, {"ring_hash": {"header": "a", "cookie": "b"}},
                                     {"fastest": {}}, "random"])
def test_bad_balancer_settings_are_refused(setting: object) -> None:
    with pytest.raises(ValidationError):
        cluster_config(setting)

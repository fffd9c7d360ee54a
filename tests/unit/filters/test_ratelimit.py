"""Local rate limit: token bucket burst, refill and cap, waits and Retry-After, keyed buckets and the LRU bound.
All on virtual time (ManualClock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clock import ManualClock
from proxy.config.model import RateLimitConfig
from proxy.filters.ratelimit import RateLimiter, TokenBucket, retry_after


def take_all(bucket: TokenBucket) -> int:
    """Take tokens until refused (without time moving); how many were admitted."""
    taken = 0
    while bucket.try_take() == 0.0:
        taken += 1
        assert taken < 1_000_000
    return taken


def test_starts_full_with_burst() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10, 25, clock)
    assert bucket.tokens == 25
    assert take_all(bucket) == 25


def test_wait_is_time_to_next_token() -> None:
    clock = ManualClock()
    bucket = TokenBucket(4, 2, clock)
    assert take_all(bucket) == 2
    assert bucket.try_take() == pytest.approx(0.25)
    clock.advance(0.1)
    assert bucket.try_take() == pytest.approx(0.15)
    clock.advance(0.15)
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.25)


def test_refusals_do_not_consume() -> None:
    clock = ManualClock()
    bucket = TokenBucket(1, 1, clock)
    assert bucket.try_take() == 0.0
    for _ in range(100):
        assert bucket.try_take() == pytest.approx(1.0)
    clock.advance(1.0)
    assert bucket.try_take() == 0.0


def test_refill_is_continuous_and_exact() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10, 1, clock)
    assert bucket.try_take() == 0.0
    # Ten steps of exactly 1/rate: each one earns one token, despite float accumulation.
    for _ in range(1000):
        clock.advance(0.1)
        assert bucket.try_take() == 0.0
        assert bucket.try_take() > 0.0


def test_refill_is_capped_at_burst() -> None:
    clock = ManualClock()
    bucket = TokenBucket(100, 5, clock)
    take_all(bucket)
    clock.advance(3600)
    assert bucket.tokens == 5
    assert take_all(bucket) == 5


def test_partial_refill() -> None:
    clock = ManualClock()
    bucket = TokenBucket(10, 10, clock)
    take_all(bucket)
    clock.advance(0.35)
    assert take_all(bucket) == 3
    assert bucket.tokens == pytest.approx(0.5)


def test_long_run_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(50, 20, clock)
    admitted = 0
    for _ in range(10_000):  # 1000 attempts per second for 10 s
        clock.advance(0.001)
        admitted += bucket.try_take() == 0.0
    assert admitted == pytest.approx(20 + 50 * 10, abs=1)


def test_fractional_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(0.1, 1, clock)  # one request per 10 s
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(10.0)
    clock.advance(4)
    assert bucket.try_take() == pytest.approx(6.0)
    assert retry_after(bucket.try_take()) == 6


@pytest.mark.parametrize(("wait", "header"), [
    (0.0, 1), (1e-6, 1), (0.2, 1), (0.999, 1), (1.0, 1), (1.0000000001, 1), (1.01, 2), (2.0, 2), (9.5, 10)])
def test_retry_after_rounds_up_to_whole_seconds_at_least_one(wait: float, header: int) -> None:
    assert retry_after(wait) == header


def test_retry_after_of_a_refusal() -> None:
    clock = ManualClock()
    bucket = TokenBucket(0.5, 1, clock)  # a token every 2 s
    bucket.try_take()
    assert retry_after(bucket.try_take()) == 2
    clock.advance(1.5)
    assert retry_after(bucket.try_take()) == 1


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bad_bucket(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, ManualClock())


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.1, 1000), burst=st.integers(1, 50),
       steps=st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_never_admits_more_than_burst_plus_refill(rate: float, burst: int, steps: list[float]) -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate, burst, clock)
    admitted = 0
    elapsed = 0.0
    for step in steps:
        clock.advance(step)
        elapsed += step
        wait = bucket.try_take()
        if wait == 0.0:
            admitted += 1
        else:
            assert 0.0 < wait <= 1.0 / rate + 1e-9
        assert bucket.tokens <= burst
        assert admitted <= burst + rate * elapsed + 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.1, 1000), burst=st.integers(1, 20), drain=st.integers(0, 40))
def test_waiting_the_answer_is_enough(rate: float, burst: int, drain: int) -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate, burst, clock)
    for _ in range(drain):
        bucket.try_take()
    wait = bucket.try_take()
    if wait > 0.0:
        clock.advance(wait)
        assert bucket.try_take() == 0.0


def limiter(clock: ManualClock, **extra: object) -> RateLimiter:
    config = RateLimitConfig.model_validate({"requests_per_second": 1, "burst": 2, **extra})
    return RateLimiter.from_config(config, clock)


def test_default_max_keys() -> None:
    assert RateLimitConfig(requests_per_second=1, burst=1).max_keys == 10000


def test_unkeyed_limiter_shares_one_bucket() -> None:
    clock = ManualClock()
    rl = limiter(clock)
    assert rl.keyed_by is None
    assert rl.check([]) == 0.0
    assert rl.check([(b"x-client-id", b"a")]) == 0.0
    assert rl.check([(b"x-client-id", b"b")]) == pytest.approx(1.0)
    assert rl.key_count == 0


def test_keyed_limiter_one_bucket_per_value() -> None:
    clock = ManualClock()
    rl = limiter(clock, key={"header": "X-Client-Id"})
    assert rl.keyed_by == b"x-client-id"
    a = [(b"host", b"svc"), (b"x-client-id", b"a")]
    b = [(b"x-client-id", b"b")]
    assert rl.check(a) == 0.0
    assert rl.check(a) == 0.0
    assert rl.check(a) > 0.0
    # Another client has its own full bucket.
    assert rl.check(b) == 0.0
    assert rl.check(b) == 0.0
    assert rl.check(b) > 0.0
    assert rl.key_count == 2
    clock.advance(1.0)
    assert rl.check(a) == 0.0
    assert rl.check(a) > 0.0


def test_values_are_case_sensitive_and_first_occurrence_wins() -> None:
    clock = ManualClock()
    rl = limiter(clock, key={"header": "x-client-id"})
    twice = [(b"x-client-id", b"a"), (b"x-client-id", b"b")]
    for _ in range(2):
        assert rl.check(twice) == 0.0
    assert rl.check(twice) > 0.0
    assert rl.check([(b"x-client-id", b"b")]) == 0.0
    assert rl.check([(b"x-client-id", b"A")]) == 0.0
    assert rl.key_count == 3


def test_requests_without_the_header_share_one_bucket() -> None:
    clock = ManualClock()
    rl = limiter(clock, key={"header": "x-client-id"}, max_keys=1)
    assert rl.check([]) == 0.0
    assert rl.check([(b"other", b"x")]) == 0.0
    assert rl.check([]) > 0.0
    # Named clients are unaffected by the anonymous bucket being empty ...
    assert rl.check([(b"x-client-id", b"a")]) == 0.0
    # ... and the anonymous bucket is not in the LRU, so it is never evicted into a fresh, full one.
    assert rl.check([(b"x-client-id", b"b")]) == 0.0
    assert rl.check([]) > 0.0
    assert rl.key_count == 1


def test_lru_bound_drops_least_recently_used() -> None:
    clock = ManualClock()
    rl = limiter(clock, key={"header": "x-client-id"}, max_keys=2)

    def req(value: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"x-client-id", value)]

    for value in (b"a", b"b"):
        rl.check(req(value))
        rl.check(req(value))
        assert rl.check(req(value)) > 0.0   # both buckets empty
    rl.check(req(b"a"))                     # touch a: b is now least recently used
    assert rl.check(req(b"c")) == 0.0       # c enters, b is dropped
    assert rl.key_count == 2
    assert rl.check(req(b"a")) > 0.0        # a kept its (empty) bucket
    assert rl.check(req(b"b")) == 0.0       # b came back with a fresh, full bucket (dropping c)
    assert rl.key_count == 2


def test_lru_never_exceeds_max_keys() -> None:
    clock = ManualClock()
    rl = limiter(clock, key={"header": "x-client-id"}, max_keys=100)
    for index in range(10_000):
        rl.check([(b"x-client-id", str(index).encode())])
        assert rl.key_count <= 100
    assert rl.key_count == 100
    assert rl.snapshot() == {"requests_per_second": 1.0, "burst": 2, "key_header": "x-client-id",
                             "key_peer_identity": False, "keys": 100, "max_keys": 100}


def test_retry_after_through_limiter() -> None:
    clock = ManualClock()
    rl = RateLimiter.from_config(RateLimitConfig(requests_per_second=100, burst=100), clock)
    for _ in range(100):
        assert rl.check([]) == 0.0
    wait = rl.check([])
    assert wait == pytest.approx(0.01)
    assert retry_after(wait) == 1


def test_one_bucket_per_caller_identity() -> None:
    clock = ManualClock()
    rl = limiter(clock, key="peer_identity", max_keys=2)
    assert rl.keyed_by_identity and rl.keyed_by is None
    web, batch = "spiffe://cluster.local/ns/a/sa/web", "spiffe://cluster.local/ns/a/sa/batch"
    assert [rl.check([], web) for _ in range(3)][:2] == [0.0, 0.0]
    assert rl.check([], web) > 0.0          # web's bucket is empty ...
    assert rl.check([], batch) == 0.0       # ... batch has its own
    assert rl.check([(b"x-client-id", b"a")], batch) == 0.0  # headers do not key this limiter
    assert rl.check([], batch) > 0.0
    assert rl.check([], "") == 0.0          # callers without an identity share one bucket
    assert rl.check([]) == 0.0
    assert rl.check([]) > 0.0
    assert rl.key_count == 2
    assert rl.snapshot()["key_peer_identity"] is True


def test_a_header_and_an_identity_key_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        RateLimiter(1.0, 1, ManualClock(), b"x-client-id", by_identity=True)

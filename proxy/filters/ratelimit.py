"""Local rate limit of a route: token buckets (Envoy's local rate limit, anchors 2.6), optionally one per client.

Owns the meaning of a route's `rate_limit`: a bucket of `burst` tokens that starts full and refills at
`requests_per_second`; each request takes one token; an empty bucket answers with the seconds until the
next token, which the caller turns into 429 + `Retry-After` (see `retry_after`). With `key: {header: h}`,
each distinct value of header `h` gets its own bucket, kept in an LRU bounded by `max_keys`; with
`key: peer_identity`, each caller SPIFFE ID (from its verified client certificate) does.

Refill is continuous and lazy (computed from elapsed time when a request arrives), not Envoy's discrete
`fill_interval` ticks: the same long-run rate and burst, without a timer, and with an exact wait for
`Retry-After`.

Must not: read the clock other than through the injected `Clock`; allocate per request on the unkeyed
path; decide the reply (the caller builds the local reply and counts `sidecar_rate_limited_total`).

Per worker: buckets live in each worker process, so with `workers: N` the route admits up to N times the
configured rate (as Envoy's default local rate limit is per process, not per fleet). The README must say so.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from proxy.clock import Clock
from proxy.config.model import PEER_IDENTITY_KEY, RateLimitConfig

# Continuous refill accumulates float error: after exactly 1/rate seconds an empty bucket may hold
# 0.9999999999 tokens. Admitting within this tolerance keeps "one token per 1/rate seconds" exact.
_EPSILON = 1e-9


def retry_after(wait: float) -> int:
    """`Retry-After` seconds for a refusal that must wait `wait` seconds: rounded up, at least 1.

    Rounding down would invite a retry that is refused again; the header has whole-second resolution."""
    seconds = math.ceil(wait - _EPSILON)
    return seconds if seconds >= 1 else 1


class TokenBucket:
    """`burst` tokens, starts full, refills continuously at `rate_per_second`; one token per request."""

    __slots__ = ("_burst", "_clock", "_last", "_rate", "_tokens")

    def __init__(self, rate_per_second: float, burst: int, clock: Clock) -> None:
        if rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be positive (got {rate_per_second})")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 (got {burst})")
        self._rate = float(rate_per_second)
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock.now()

    @property
    def tokens(self) -> float:
        """Tokens available now (refill included); for snapshots and tests, not the hot path."""
        elapsed = self._clock.now() - self._last
        return min(self._burst, self._tokens + max(0.0, elapsed) * self._rate)

    def try_take(self) -> float:
        """Take one token: 0.0 when admitted, else the seconds until a token will be available."""
        now = self._clock.now()
        elapsed = now - self._last
        tokens = self._tokens
        if elapsed > 0.0:
            # A clock that stands still (or a coarse one) adds nothing; it never removes tokens.
            tokens += elapsed * self._rate
            if tokens > self._burst:
                tokens = self._burst
            self._last = now
        if tokens >= 1.0 - _EPSILON:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / self._rate


class RateLimiter:
    """A route's rate limit: one shared bucket, or one bucket per value of a header or per caller identity
    (LRU-bounded).

    Keyed mode: requests *without* the header (or without an identity) share one bucket of their own (never
    evicted), so leaving the header out neither escapes the limit nor lets anonymous callers spend named
    callers' buckets. A header that appears more than once is keyed by its first value. A bucket dropped
    from the LRU comes back full; a bucket idle for `burst / rate` seconds is full anyway, so `max_keys`
    above the number of clients active within that time loses nothing.
    """

    __slots__ = ("_buckets", "_burst", "_by_identity", "_clock", "_header", "_max_keys", "_rate", "_shared")

    def __init__(self, rate_per_second: float, burst: int, clock: Clock, header: bytes | None = None,
                 max_keys: int = 10000, by_identity: bool = False) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1 (got {max_keys})")
        self._rate = rate_per_second
        self._burst = burst
        self._clock = clock
        # Header names arrive lower-cased from the codec; compare bytes without decoding.
        self._header = header.lower() if header is not None else None
        if by_identity and header is not None:
            raise ValueError("a rate limit is keyed by a header or by the peer identity, not both")
        self._by_identity = by_identity
        self._max_keys = max_keys
        # Unkeyed: the route's bucket. Keyed: the bucket of requests without the header (or identity).
        self._shared = TokenBucket(rate_per_second, burst, clock)
        # Keys are header values (bytes) or caller identities (str): one limiter has only one kind.
        self._buckets: OrderedDict[bytes | str, TokenBucket] = OrderedDict()

    @classmethod
    def from_config(cls, config: RateLimitConfig, clock: Clock) -> RateLimiter:
        key = config.key
        if key == PEER_IDENTITY_KEY:
            return cls(config.requests_per_second, config.burst, clock, None, config.max_keys, by_identity=True)
        header = key.header.lower().encode("latin-1") if key is not None and not isinstance(key, str) else None
        return cls(config.requests_per_second, config.burst, clock, header, config.max_keys)

    @property
    def keyed_by(self) -> bytes | None:
        """The lower-case header name buckets are keyed by, or None for one bucket per route."""
        return self._header

    @property
    def keyed_by_identity(self) -> bool:
        """Whether each caller identity has its own bucket."""
        return self._by_identity

    @property
    def key_count(self) -> int:
        """Distinct header values (or identities) holding a bucket (the shared bucket not included)."""
        return len(self._buckets)

    def check(self, headers: list[tuple[bytes, bytes]], peer_identity: str = "") -> float:
        """One request (with these headers, from a caller with this SPIFFE ID, "" for none): 0.0 when
        admitted, else seconds until its bucket has a token (see `retry_after`)."""
        name = self._header
        if name is None:
            if self._by_identity and peer_identity:
                return self._take_keyed(peer_identity)
            return self._shared.try_take()
        for header, value in headers:
            if header == name:
                return self._take_keyed(value)
        return self._shared.try_take()

    def _take_keyed(self, value: bytes | str) -> float:
        buckets = self._buckets
        bucket = buckets.get(value)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, self._clock)
            buckets[value] = bucket
            if len(buckets) > self._max_keys:
                # The least recently used client loses its bucket (and comes back with a full one).
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(value)
        return bucket.try_take()

    def snapshot(self) -> dict[str, object]:
        """What /config_dump or /clusters may show; not the hot path."""
        return {
            "requests_per_second": self._rate,
            "burst": self._burst,
            "key_header": self._header.decode("latin-1") if self._header is not None else None,
            "key_peer_identity": self._by_identity,
            "keys": len(self._buckets),
            "max_keys": self._max_keys,
        }

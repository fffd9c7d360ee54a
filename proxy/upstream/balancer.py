"""Load balancers: which endpoint of a cluster takes an attempt.

Owns the `Balancer` interface and its implementations (round robin today; least request, peak EWMA, ring
hash and weighted round robin implement the same interface), and `pick_from`, the rules every balancer
keeps when it offers endpoints:
- a balancer is built over an immutable endpoint snapshot and rebuilt whole when the set changes
  (`rebuild`), so a pick never takes a lock or sees a half-updated set;
- `pick(tried, hash_key)` runs per attempt with the request's context: the endpoints this request already
  tried, and a hash key (the 64-bit hash a route's hash policy computed, or None; only hashing balancers
  read it). It skips endpoints that are draining or ejected, prefers untried ones, and asks the
  breaker (`Endpoint.admit()`, which takes a half-open trial slot when it says yes) only of the endpoint it
  has chosen, moving on when the breaker refuses; when no untried endpoint admits, the first tried one in
  the balancer's order may take the attempt (a retry on the same endpoint beats no retry). It returns the
  endpoint with its breaker token, or None when no endpoint may take the attempt;
- `observe(endpoint, verdict, latency)` is told every attempt's outcome and latency (seconds from sending
  to the verdict), which is what latency-aware balancers learn from.
State a balancer learns per endpoint and must keep across snapshots belongs on the `Endpoint` (which
outlives set changes that keep it, as `in_flight` does), not in the balancer.

Hot path: `pick` runs per attempt and is compiled with mypyc; balancers are plain slotted native classes
(the cluster's calls dispatch through a vtable, not a Python method lookup as a Protocol's would), and a
pick allocates nothing but its result. The price: in the compiled build no interpreted class can subclass
`Balancer`, so every balancer lives here. Must not do I/O.
"""

from __future__ import annotations

import bisect
import hashlib
import math

from proxy.clock import Clock
from proxy.config.model import ClusterConfig
from proxy.message import Headers, RequestHead
from proxy.resilience.classify import Verdict
from proxy.upstream.endpoint import ACTIVE, Endpoint


class Balancer:
    """The picking policy of a cluster over one endpoint snapshot. Subclasses implement `pick` and `rebuild`."""

    __slots__ = ("endpoints",)

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints = endpoints

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> Balancer:
        """A balancer of the same kind and settings over a new endpoint snapshot (this one is left as is)."""
        raise NotImplementedError

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None) -> tuple[Endpoint, int] | None:
        """An endpoint for this attempt and its breaker token, or None (see the module docstring's rules)."""
        raise NotImplementedError

    def observe(self, endpoint: Endpoint, verdict: Verdict, latency: float) -> None:
        """An attempt on `endpoint` ended with `verdict` after `latency` seconds (`verdict.cancelled`: the
        client left). May name an endpoint this snapshot no longer holds. Round robin learns nothing."""


class RoundRobin(Balancer):
    """Each endpoint in turn: every pick starts one endpoint further than the last. An endpoint in slow start
    keeps its turn with probability `ramp` (else the turn passes to the next); `clock` is needed for that
    only."""

    __slots__ = ("_next", "clock")

    def __init__(self, endpoints: tuple[Endpoint, ...], clock: Clock | None = None) -> None:
        super().__init__(endpoints)
        self._next = 0
        self.clock = clock

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> Balancer:
        return make_round_robin(endpoints, self.clock)

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None) -> tuple[Endpoint, int] | None:
        endpoints = self.endpoints
        count = len(endpoints)
        if count == 0:
            return None
        start = self._next
        self._next = start + 1 if start + 1 < count else 0
        if endpoints[start].warm_at != 0.0:
            start = pass_turn(endpoints, start, self.clock)
        return pick_from(endpoints, start, tried)


def pick_from(endpoints: tuple[Endpoint, ...], start: int, tried: list[Endpoint] | None) -> tuple[Endpoint, int] | None:
    """Walk `endpoints` from index `start` (wrapping once round), the caller's order of preference: the first
    active, non-ejected, untried endpoint whose breaker admits, else the first tried one if its breaker
    admits; None when neither. A breaker that refuses gives nothing away, and the first to admit is the pick:
    only the chosen endpoint's half-open trial slot is ever taken."""
    count = len(endpoints)
    fallback: Endpoint | None = None
    for offset in range(count):
        index = start + offset
        endpoint = endpoints[index if index < count else index - count]
        if endpoint.ejected or endpoint.state is not ACTIVE:
            continue
        if tried and endpoint in tried:
            if fallback is None:
                fallback = endpoint
            continue
        token = endpoint.admit()
        if token is not None:
            return endpoint, token
    if fallback is not None:
        token = fallback.admit()
        if token is not None:
            return fallback, token
    return None


class WeightedRoundRobin(Balancer):
    """Round robin by weight: a precomputed smooth schedule (nginx's smooth weighted round robin), so weights
    3:1 give A A B A rather than A A A B. `RoundRobin.rebuild` makes one when weights differ, so equal-weight
    clusters keep the plain round robin's pick."""

    __slots__ = ("_next", "_schedule", "clock")

    def __init__(self, endpoints: tuple[Endpoint, ...], clock: Clock | None = None) -> None:
        super().__init__(endpoints)
        self._next = 0
        self._schedule = smooth_schedule(tuple(e.weight for e in endpoints))
        self.clock = clock

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> Balancer:
        return make_round_robin(endpoints, self.clock)

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None) -> tuple[Endpoint, int] | None:
        schedule = self._schedule
        count = len(schedule)
        if count == 0:
            return None
        step = self._next
        self._next = step + 1 if step + 1 < count else 0
        endpoints = self.endpoints
        start = schedule[step]
        if endpoints[start].warm_at != 0.0:
            start = pass_turn(endpoints, start, self.clock)
        return pick_from(endpoints, start, tried)


def smooth_schedule(weights: tuple[int, ...]) -> tuple[int, ...]:
    """Endpoint indexes in smooth weighted round robin order over one period (weights divided by their gcd):
    each step every index gains its weight, the largest current value is chosen and loses the total."""
    divisor = 0
    for weight in weights:
        divisor = math.gcd(divisor, weight)
    if divisor == 0:
        return ()
    scaled = [weight // divisor for weight in weights]
    total = sum(scaled)
    current = [0] * len(scaled)
    order: list[int] = []
    for _ in range(total):
        best = 0
        for index, weight in enumerate(scaled):
            current[index] += weight
            if current[index] > current[best]:
                best = index
        current[best] -= total
        order.append(best)
    return tuple(order)


def make_round_robin(endpoints: tuple[Endpoint, ...], clock: Clock | None = None) -> Balancer:
    """Plain round robin when every weight is the same, else the weighted schedule."""
    if any(e.weight != endpoints[0].weight for e in endpoints):
        return WeightedRoundRobin(endpoints, clock)
    return RoundRobin(endpoints, clock)


# Slow start: a new endpoint's share starts at this fraction of its weight (Envoy's min_weight_percent 10).
MIN_RAMP = 0.1


def ramp(endpoint: Endpoint, now: float) -> float:
    """The fraction of its weight an endpoint in slow start gets at `now`: rising linearly from `MIN_RAMP`
    to 1 over the window; 1 once warm (and then `warm_at` is cleared, so later picks check nothing)."""
    warm_at = endpoint.warm_at
    if warm_at == 0.0:
        return 1.0
    left = warm_at - now
    if left <= 0.0:
        endpoint.warm_at = 0.0
        return 1.0
    fraction = 1.0 - left / endpoint.ramp_window
    return fraction if fraction > MIN_RAMP else MIN_RAMP


def pass_turn(endpoints: tuple[Endpoint, ...], start: int, clock: Clock | None) -> int:
    """Round robin's turn landed on an endpoint in slow start: it keeps it with probability `ramp`, else the
    turn goes to the next endpoint."""
    if clock is None or clock.random.random() < ramp(endpoints[start], clock.now()):
        return start
    return start + 1 if start + 1 < len(endpoints) else 0


def eligible(endpoint: Endpoint, tried: list[Endpoint] | None) -> bool:
    """Active, not ejected, not tried by this request (the breaker is asked only of the chosen one)."""
    if endpoint.ejected or endpoint.state is not ACTIVE:
        return False
    return not (tried and endpoint in tried)


class PowerOfTwo(Balancer):
    """Power of two choices: two distinct random endpoints, the one with the lower `cost` is asked first.
    When only one of the two is eligible it is taken; when neither is, or the chosen one's breaker refuses,
    `pick_from` walks the set from the first candidate (a random start). Subclasses define `cost`."""

    __slots__ = ("clock",)

    def __init__(self, endpoints: tuple[Endpoint, ...], clock: Clock) -> None:
        super().__init__(endpoints)
        self.clock = clock

    def cost(self, endpoint: Endpoint, now: float) -> float:
        raise NotImplementedError

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None) -> tuple[Endpoint, int] | None:
        endpoints = self.endpoints
        count = len(endpoints)
        if count < 2:
            return pick_from(endpoints, 0, tried) if count else None
        # Both candidates from one `random()` (a C call; `randrange` runs Python code in `random.py`, ~2,500
        # instructions a call): its integer part picks the first, its fraction the second of the others.
        scaled = self.clock.random.random() * count
        first = int(scaled)
        second = int((scaled - first) * (count - 1))
        if first >= count:  # float rounding at the top of the range
            first = count - 1
        if second >= first:
            second += 1
        a = endpoints[first]
        b = endpoints[second]
        chosen: Endpoint | None = None
        if eligible(a, tried):
            chosen = a
            if eligible(b, tried):
                now = self.clock.now()
                cost_a = self.cost(a, now)
                cost_b = self.cost(b, now)
                # Slow start: a ramping endpoint looks as costly as if its weight were scaled by the ramp.
                if a.warm_at != 0.0:
                    cost_a /= ramp(a, now)
                if b.warm_at != 0.0:
                    cost_b /= ramp(b, now)
                if cost_b < cost_a:
                    chosen = b
        elif eligible(b, tried):
            chosen = b
        if chosen is not None:
            token = chosen.admit()
            if token is not None:
                return chosen, token
        return pick_from(endpoints, first, tried)


class LeastRequest(PowerOfTwo):
    """P2C on requests in flight, divided by weight ((in_flight + 1) / weight, as Envoy's least request with
    its default bias)."""

    __slots__ = ()

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> LeastRequest:
        return LeastRequest(endpoints, self.clock)

    def cost(self, endpoint: Endpoint, now: float) -> float:
        return (endpoint.in_flight + 1) / endpoint.weight


# Peak EWMA's settings (linkerd2-proxy's defaults): the decay's time constant and an unmeasured endpoint's RTT.
DEFAULT_DECAY = 10.0
DEFAULT_RTT = 0.030
# A failed attempt counts as a sample this many times the larger of its latency and the current estimate.
FAILURE_PENALTY = 2.0


class PeakEwma(PowerOfTwo):
    """P2C on cost = RTT estimate x (in flight + 1), the estimate being linkerd2-proxy's (tower's) peak EWMA:
    a sample above the estimate replaces it (peak-sensitive), a lower one moves it by 1 - exp(-elapsed /
    decay); reading it decays it toward zero with the same time constant, so an endpoint that was slow and
    then left alone is tried again. An endpoint never measured starts at `default_rtt`. A failed attempt is
    recorded as `FAILURE_PENALTY` x max(latency, estimate) (a fast error must not look like a fast endpoint);
    a cancelled one (the client left: its latency is a lower bound) only as a peak. The estimate lives on the
    endpoint (`rtt`, `rtt_at`)."""

    __slots__ = ("decay", "default_rtt")

    def __init__(self, endpoints: tuple[Endpoint, ...], clock: Clock, decay: float = DEFAULT_DECAY,
                 default_rtt: float = DEFAULT_RTT) -> None:
        super().__init__(endpoints, clock)
        self.decay = decay
        self.default_rtt = default_rtt

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> PeakEwma:
        return PeakEwma(endpoints, self.clock, self.decay, self.default_rtt)

    def estimate(self, endpoint: Endpoint, now: float) -> float:
        """The endpoint's RTT estimate at `now`, decayed toward zero since it was last touched."""
        rtt = endpoint.rtt
        if rtt < 0.0:
            endpoint.rtt = self.default_rtt
            endpoint.rtt_at = now
            return self.default_rtt
        elapsed = now - endpoint.rtt_at
        if elapsed > 0.0:
            rtt *= math.exp(-elapsed / self.decay)
            endpoint.rtt = rtt
            endpoint.rtt_at = now
        return rtt

    def cost(self, endpoint: Endpoint, now: float) -> float:
        return self.estimate(endpoint, now) * (endpoint.in_flight + 1)

    def observe(self, endpoint: Endpoint, verdict: Verdict, latency: float) -> None:
        now = self.clock.now()
        rtt = endpoint.rtt
        if rtt < 0.0:
            rtt = self.default_rtt
            endpoint.rtt_at = now
        sample = latency
        if verdict.cancelled:
            if sample > rtt:
                endpoint.rtt = sample
                endpoint.rtt_at = now
            return
        if verdict.is_failure:
            sample = FAILURE_PENALTY * (sample if sample > rtt else rtt)
        if sample > rtt:
            endpoint.rtt = sample
        else:
            weight = math.exp(-max(now - endpoint.rtt_at, 0.0) / self.decay)
            endpoint.rtt = rtt * weight + sample * (1.0 - weight)
        endpoint.rtt_at = now


# Virtual nodes per unit of weight on the hash ring: with 160, each endpoint's share of the ring is within a
# few percent of 1/N (the standard deviation of a share falls as 1/sqrt(vnodes)).
RING_VNODES = 160


def hash64(data: bytes) -> int:
    """A 64-bit hash, the same in every process (workers agree on a key's endpoint; Python's `hash` of
    bytes is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RingHash(Balancer):
    """Consistent hashing (Karger's ring, as Envoy's ring hash): each endpoint owns `vnodes` x weight points
    on a 64-bit ring, hashed from its address; a key goes to the owner of the first point at or after the
    key's hash. Adding an endpoint moves only the keys that fall on its new points, about 1/N of them. An
    unavailable owner (draining, ejected, tried, breaker refusing) passes the key on along the ring, so its
    keys spread over the others and come back when it does. Without a key (the request had no such header or
    cookie), a random start."""

    __slots__ = ("_owners", "_points", "clock", "vnodes")

    def __init__(self, endpoints: tuple[Endpoint, ...], clock: Clock, vnodes: int = RING_VNODES) -> None:
        super().__init__(endpoints)
        self.clock = clock
        self.vnodes = vnodes
        ring: list[tuple[int, int]] = []
        for index, endpoint in enumerate(endpoints):
            name = endpoint.address.encode()
            for replica in range(vnodes * endpoint.weight):
                ring.append((hash64(name + b"_" + str(replica).encode()), index))
        ring.sort()
        self._points = [point for point, _ in ring]
        self._owners = [index for _, index in ring]

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> RingHash:
        return RingHash(endpoints, self.clock, self.vnodes)

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None) -> tuple[Endpoint, int] | None:
        endpoints = self.endpoints
        if not endpoints:
            return None
        if hash_key is None:
            return pick_from(endpoints, self.clock.random.randrange(len(endpoints)), tried)
        points = self._points
        owners = self._owners
        size = len(points)
        start = bisect.bisect_left(points, hash_key)
        fallback: Endpoint | None = None
        previous = -1
        for offset in range(size):
            position = start + offset
            owner = owners[position if position < size else position - size]
            if owner == previous:
                continue  # the same endpoint's next point: already asked
            previous = owner
            endpoint = endpoints[owner]
            if endpoint.ejected or endpoint.state is not ACTIVE:
                continue
            if tried and endpoint in tried:
                if fallback is None:
                    fallback = endpoint
                continue
            token = endpoint.admit()
            if token is not None:
                return endpoint, token
        if fallback is not None:
            token = fallback.admit()
            if token is not None:
                return fallback, token
        return None


# Envoy's overprovisioning factor (Istio's locality load balancing keeps it): the local zone keeps all the
# traffic while at least 1 / 1.4 (about 72 %) of its endpoints are available, and sheds the rest beyond.
OVERPROVISIONING = 1.4


class ZonePreferring(Balancer):
    """Topology-aware routing over two balancers of the cluster's kind: `local` over the endpoints meant for
    this node's zone, `everywhere` over all. While the local ones are healthy enough (available share x
    `OVERPROVISIONING` >= 1), every pick is local; below that, that product is the share of picks kept
    local and the rest go to `everywhere`; with no local endpoint available, all of them do. Availability is
    counted per pick (the local set is one zone's endpoints: a handful)."""

    __slots__ = ("clock", "everywhere", "local")

    def __init__(self, local: Balancer, everywhere: Balancer, clock: Clock) -> None:
        super().__init__(everywhere.endpoints)
        self.local = local
        self.everywhere = everywhere
        self.clock = clock

    def rebuild(self, endpoints: tuple[Endpoint, ...]) -> Balancer:
        # The cluster splits endpoints by zone itself (`Cluster.rebalance`); a plain rebuild drops the split.
        return self.everywhere.rebuild(endpoints)

    def local_share(self) -> float:
        """The share of picks the local zone takes now (0.0 to 1.0)."""
        local = self.local.endpoints
        available = 0
        for endpoint in local:
            if endpoint.available():
                available += 1
        share = OVERPROVISIONING * available / len(local) if local else 0.0
        return share if share < 1.0 else 1.0

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None) -> tuple[Endpoint, int] | None:
        share = self.local_share()
        if share >= 1.0 or (share > 0.0 and self.clock.random.random() < share):
            chosen = self.local.pick(tried, hash_key)
            if chosen is not None:
                return chosen
        return self.everywhere.pick(tried, hash_key)

    def observe(self, endpoint: Endpoint, verdict: Verdict, latency: float) -> None:
        self.everywhere.observe(endpoint, verdict, latency)


class HashPolicy:
    """What a ring-hash cluster hashes a request on (`load_balancer: {ring_hash: ...}`): a header's first
    value, a cookie's value, or the client's IP. Only a ring-hash cluster has one, so other clusters compute
    no key. `key` is None when the request lacks the header or cookie (a random endpoint then)."""

    __slots__ = ("cookie", "header")

    def __init__(self, header: bytes | None = None, cookie: bytes | None = None) -> None:
        # Neither: the source IP.
        self.header = header
        self.cookie = cookie

    def key(self, head: RequestHead, peer_ip: bytes) -> int | None:
        if self.header is not None:
            value = head.header(self.header)
            return None if value is None else hash64(value)
        if self.cookie is not None:
            value = cookie_value(head.headers, self.cookie)
            return None if value is None else hash64(value)
        return hash64(peer_ip) if peer_ip else None


def cookie_value(headers: Headers, name: bytes) -> bytes | None:
    """The value of cookie `name` in the request's Cookie headers, or None."""
    prefix = name + b"="
    for header, value in headers:
        if header != b"cookie":
            continue
        for part in value.split(b";"):
            part = part.strip()
            if part.startswith(prefix):
                return part[len(prefix):]
    return None


def make_balancer(config: ClusterConfig, clock: Clock) -> tuple[Balancer, HashPolicy | None]:
    """The cluster's balancer (over no endpoints yet) and, for ring hash with a key, its hash policy."""
    kind = config.load_balancer
    if kind == "least_request":
        return LeastRequest((), clock), None
    if kind == "peak_ewma":
        return PeakEwma((), clock), None
    if kind == "ring_hash":
        ring = config.ring_hash
        policy: HashPolicy | None = None
        if ring is not None:
            policy = HashPolicy(ring.header.lower().encode("latin-1") if ring.header is not None else None,
                                ring.cookie.encode("latin-1") if ring.cookie is not None else None)
        return RingHash((), clock), policy
    return RoundRobin((), clock), None

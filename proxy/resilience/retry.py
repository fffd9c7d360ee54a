"""A route's retry policy, compiled once from config: what may be retried, on what, how often, how late.

Owns `CompiledRetryPolicy` (the runtime of a `RetryPolicyConfig`):
the attempt count, per-try timeout, the `on:` conditions as one bitmask, which requests may be retried
at all, the replay-buffer limit, Retry-After parsing, and the route's back-off and budget objects.
Must not run the retry loop, sleep or touch sockets: the outbound path asks it questions and acts.
"""

from __future__ import annotations

import calendar
import math
from email.utils import parsedate_tz
from typing import Final

from proxy.clock import Clock
from proxy.config.model import RetryPolicyConfig
from proxy.resilience.backoff import ExponentialBackoff, FixedSchedule
from proxy.resilience.backoff import from_config as backoff_from_config
from proxy.resilience.budget import RetryBudget
from proxy.resilience.classify import Verdict, condition_mask

# RFC 9110 9.2.2 idempotent methods (CONNECT and POST/PATCH are not); httptools hands methods as bytes.
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
# Envoy's rate-limited back-off and the contract honour Retry-After only on these.
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})


def parse_retry_after(value: bytes, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None when unparseable.

    A date in the past means "now" (0.0). All three HTTP-date forms of RFC 9110 are GMT by definition.
    """
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        # Past 15 digits a delay is "forever" anyway (and float() of a huge int overflows); the caller caps.
        return float(int(text)) if len(text) <= 15 else math.inf
    try:
        parsed = parsedate_tz(text.decode("latin-1"))
    except (ValueError, IndexError, OverflowError):  # defensive: the email parser is lenient but old
        return None
    if parsed is None:
        return None
    try:
        when = calendar.timegm(parsed[:6]) - (parsed[9] or 0)
    except (ValueError, OverflowError):
        return None
    delay = when - now_wall
    return delay if delay > 0.0 else 0.0


class CompiledRetryPolicy:
    """The runtime of one route's `retries:`; built once per route, shared by all its requests."""

    __slots__ = ("attempts", "backoff", "budget", "conditions", "max_retry_after", "per_try_timeout",
                 "replay_buffer")

    def __init__(self, attempts: int, per_try_timeout: float | None, conditions: int, replay_buffer: int,
                 max_retry_after: float, backoff: ExponentialBackoff | FixedSchedule,
                 budget: RetryBudget) -> None:
        # Istio's meaning: retries after the first try, so at most attempts + 1 upstream requests.
        self.attempts = attempts
        self.per_try_timeout = per_try_timeout
        self.conditions = conditions
        self.replay_buffer = replay_buffer
        self.max_retry_after = max_retry_after
        self.backoff = backoff
        # Mutable and per route: a reload that rebuilds the route starts a fresh window.
        self.budget = budget

    @classmethod
    def from_config(cls, config: RetryPolicyConfig, clock: Clock) -> CompiledRetryPolicy:
        return cls(
            attempts=config.attempts,
            per_try_timeout=config.per_try_timeout,
            conditions=condition_mask(config.on),
            replay_buffer=config.replay_buffer,
            max_retry_after=config.max_retry_after,
            backoff=backoff_from_config(config.backoff, clock.random),
            budget=RetryBudget.from_config(config.budget, clock),
        )

    def should_retry(self, verdict: Verdict) -> bool:
        """Does this attempt's verdict satisfy one of the route's `on:` conditions?"""
        return (verdict.conditions & self.conditions) != 0

    @staticmethod
    def may_retry_request(method: bytes, has_idempotency_key: bool, reached_upstream: bool) -> bool:
        """May this request be sent again at all? (The caller also checks the response has not started.)

        Idempotent methods, any method with an Idempotency-Key, and any request that never reached the
        upstream (a connect failure: the upstream saw nothing, so nothing can happen twice).
        """
        return not reached_upstream or has_idempotency_key or method in IDEMPOTENT_METHODS

    def may_replay(self, body_bytes: int) -> bool:
        """A request body larger than `replay_buffer` was not kept, so it cannot be sent again."""
        return body_bytes <= self.replay_buffer

    def retry_after_delay(self, header_value: bytes | None, status: int, now_wall: float) -> float | None:
        """The upstream's Retry-After on a 429 or 503, capped at `max_retry_after`; None when absent.

        The retry loop waits max(backoff delay, this). `now_wall` is wall-clock seconds (`Clock.wall()`),
        since an HTTP-date is absolute.
        """
        if header_value is None or status not in RETRY_AFTER_STATUSES:
            return None
        delay = parse_retry_after(header_value, now_wall)
        if delay is None:
            return None
        return delay if delay < self.max_retry_after else self.max_retry_after

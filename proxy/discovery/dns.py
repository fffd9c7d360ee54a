"""DNS discovery: a name's A/AAAA records (a headless Service's pod IPs), resolved every `refresh`.

Owns the refresh loop of one `discovery.dns` config: look the name up without blocking the event loop
(the loop's `getaddrinfo`, which runs in a thread: asyncio's executor, or libuv's pool under uvloop), hand
each changed endpoint set whole to its subscribers (clusters' `set_endpoints`), keep the last good set when
a lookup fails, and count failures by kind. The next lookup is due after `refresh`, or after the answer's
TTL when a lookup reports one and it is shorter (stdlib `getaddrinfo` reports none, so there `refresh` is
the only clock), jittered down by up to 10% so sidecars do not resolve in lockstep. Failures back off
exponentially from 1s up to `refresh`, jittered, never faster than `MIN_DELAY`: no hot loop. Must not open
connections or know clusters beyond the callbacks it is given.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final

from proxy.clock import Clock
from proxy.config.model import DnsDiscoveryConfig

log = logging.getLogger("proxy.discovery.dns")

Addresses = tuple[tuple[str, int], ...]
# A lookup: (name, port) -> the sorted, de-duplicated addresses and the answer's TTL in seconds, when known.
Lookup = Callable[[str, int], Awaitable[tuple[Addresses, float | None]]]
Subscriber = Callable[[Addresses], None]

LOOKUP_TIMEOUT: Final = 5.0   # one lookup gives up after this (kind "timeout")
BACKOFF_BASE: Final = 1.0     # the first retry after a failure, doubling up to `refresh`
MIN_DELAY: Final = 0.5        # no lookup follows another sooner than this, whatever the TTL or refresh
JITTER: Final = 0.1           # each delay is shortened by up to this share

ERROR_KINDS: Final = ("nxdomain", "timeout", "empty", "other")


class EmptyAnswer(Exception):
    """The name resolved to no address."""


async def getaddrinfo_lookup(name: str, port: int) -> tuple[Addresses, float | None]:
    """The stdlib resolver through the running loop (a worker thread): A and AAAA records, no TTL."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)
    found = {(str(info[4][0]), int(info[4][1])) for info in infos}
    return tuple(sorted(found)), None


def error_kind(error: BaseException) -> str:
    """The `kind` label of a failed lookup: nxdomain (no such name, or no address of the family asked),
    timeout (ours, or the resolver's "try again": the DNS server did not answer), empty, or other."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, EmptyAnswer):
        return "empty"
    if isinstance(error, socket.gaierror):
        if error.errno in _NXDOMAIN:
            return "nxdomain"
        if error.errno == socket.EAI_AGAIN:
            return "timeout"
    return "other"


_NXDOMAIN: Final = frozenset(code for code in (getattr(socket, "EAI_NONAME", None),
                                               getattr(socket, "EAI_NODATA", None)) if code is not None)


class DnsDiscovery:
    """The refresh loop of one `discovery.dns` config, shared by the clusters subscribed to it (a reload that
    keeps the config hands the running resolver, and its last good set, to the cluster that replaces)."""

    __slots__ = ("_clock", "_failures", "_lookup", "_on_error", "cluster", "config", "current", "errors", "gate",
                 "last_error", "last_refresh", "subscribers", "task")

    def __init__(self, cluster: str, config: DnsDiscoveryConfig, clock: Clock,
                 on_error: Callable[[str], None] | None = None, lookup: Lookup = getaddrinfo_lookup) -> None:
        self.cluster = cluster
        self.config = config
        self._clock = clock
        self._lookup = lookup
        self._on_error = on_error
        self._failures = 0
        # The last good set (None until the first lookup succeeded): kept when a later lookup fails.
        self.current: Addresses | None = None
        self.subscribers: list[Subscriber] = []
        self.errors = 0
        self.last_error: str | None = None
        self.last_refresh: float | None = None
        self.task: asyncio.Task[None] | None = None
        # Set by the owner: the first lookup waits for it (the sidecar logs what it bound before any lookup).
        self.gate: asyncio.Event | None = None

    def subscribe(self, subscriber: Subscriber) -> None:
        """Deliver every changed set to `subscriber`, the last good one (if any) at once."""
        self.subscribers.append(subscriber)
        if self.current is not None:
            subscriber(self.current)

    def unsubscribe(self, subscriber: Subscriber) -> bool:
        """Stop delivering to `subscriber`; True when none is left (the owner then stops the task)."""
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)
        return not self.subscribers

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=f"dns discovery {self.cluster}")
        return self.task

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def run(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        while True:
            delay = await self.refresh()
            await self._clock.sleep(delay)

    async def refresh(self) -> float:
        """One lookup: deliver the set if it changed, or count the failure; the delay until the next."""
        dns = self.config
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                addresses, ttl = await self._lookup(dns.name, dns.port)
            if not addresses:
                raise EmptyAnswer(dns.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failed(exc)
        self._failures = 0
        self.last_refresh = self._clock.now()
        if addresses != self.current:
            log.info("cluster %s: %s resolved to %d endpoints", self.cluster, dns.name, len(addresses))
            self.current = addresses
            self._deliver(addresses)
        period = dns.refresh if ttl is None else min(dns.refresh, ttl)
        return self._jittered(period)

    def _deliver(self, addresses: Addresses) -> None:
        for subscriber in list(self.subscribers):
            try:
                subscriber(addresses)
            except Exception:  # a bug in one subscriber must not end the refresh loop for the others
                log.exception("cluster %s: applying the endpoints of %s failed", self.cluster, self.config.name)

    def _failed(self, error: Exception) -> float:
        kind = error_kind(error)
        self.errors += 1
        self.last_error = kind
        self._failures += 1
        log.warning("cluster %s: resolving %s failed (%s: %s); %s", self.cluster, self.config.name, kind,
                    error, "keeping the last good set" if self.current is not None else "no endpoints yet")
        if self._on_error is not None:
            self._on_error(kind)
        backoff = min(self.config.refresh, BACKOFF_BASE * 2 ** min(self._failures - 1, 16))
        return self._jittered(backoff)

    def _jittered(self, delay: float) -> float:
        return max(MIN_DELAY, delay * (1.0 - JITTER * self._clock.random.random()))

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows of this resolver."""
        return {
            "source": "dns",
            "name": self.config.name,
            "port": self.config.port,
            "refresh_seconds": self.config.refresh,
            "resolved": self.current is not None,
            "errors": self.errors,
            "last_error": self.last_error,
        }

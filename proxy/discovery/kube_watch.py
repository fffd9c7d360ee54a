"""One watched Kubernetes collection kept current in memory: list, watch, resume, re-list on 410 Gone.

Owns the loop Kubernetes asks clients to run (api-concepts, "Efficient detection of changes"): LIST to get
the objects and a resourceVersion; WATCH from it (with bookmarks, which only move the resourceVersion on);
when the server ends the watch, WATCH again from the last resourceVersion seen; on 410 Gone (the version is
too old), LIST again and diff against what is held, so objects deleted while the watch was away are
dropped even though no DELETED event will ever name them. On any other failure the objects held stay as
they are (discovery keeps serving the last known endpoints) and the loop backs off exponentially with
jitter, from `BACKOFF_BASE` up to `BACKOFF_MAX`, never faster than `MIN_DELAY`: no hot loop, even against a
server that ends every watch at once. Each change is handed whole (name -> object) to the subscribers.

`WatchRegistry` shares one `ResourceWatch` per distinct collection (path + label selector) among every
subscriber (clusters of one Service, a reload's old and new cluster), starting it with the first and
stopping it with the last. Must not know endpoints or clusters: subscribers are callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from proxy.discovery.kube_api import KubeApi, KubeError

log = logging.getLogger("proxy.discovery.kubernetes")

BACKOFF_BASE: Final = 1.0
BACKOFF_MAX: Final = 30.0
MIN_DELAY: Final = 0.5
JITTER: Final = 0.2
# Ask the server to end each watch after this (client-go picks 5 to 10 minutes); the stream is given up by
# the client this much later when the server did not end it.
WATCH_SECONDS: Final = 300
WATCH_GRACE: Final = 30.0
# A watch that ends sooner than this without any event counts as a failure for the backoff.
MIN_WATCH: Final = 1.0

T = TypeVar("T")
Objects = dict[str, Any]
Subscriber = Callable[[Objects], None]
ErrorSubscriber = Callable[[str], None]


class ResourceWatch(Generic[T]):
    """The objects of one collection (`path`, filtered by `selector`), kept current by list + watch."""

    def __init__(self, api: KubeApi, path: str, kind: type[T], selector: dict[str, str],
                 rng: random.Random | None = None) -> None:
        self.api = api
        self.path = path
        self.kind = kind
        self.selector = dict(selector)
        self.params = {"labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))} if selector else {}
        self._random = rng if rng is not None else random.Random()
        self.objects: Objects = {}
        # Until the first LIST succeeded, subscribers have nothing to go on (and readiness waits).
        self.synced = False
        self.resource_version: str | None = None
        self.subscribers: list[Subscriber] = []
        self.error_subscribers: list[ErrorSubscriber] = []
        self.errors = 0
        self.last_error: str | None = None
        self.lists = 0
        self.watches = 0
        self._failures = 0
        # Tests shorten these; a real API server ends the watch itself after `watch_seconds`.
        self.watch_seconds = WATCH_SECONDS
        self.watch_grace = WATCH_GRACE
        self.task: asyncio.Task[None] | None = None
        # Set by the owner: the first request waits for it (the sidecar logs what it bound before any call).
        self.gate: asyncio.Event | None = None

    # -- subscribers ---------------------------------------------------------------------------------

    def subscribe(self, on_change: Subscriber, on_error: ErrorSubscriber | None = None) -> None:
        """Hand every change to `on_change` (the current objects at once, when listed already)."""
        self.subscribers.append(on_change)
        if on_error is not None:
            self.error_subscribers.append(on_error)
        if self.synced:
            on_change(dict(self.objects))

    def unsubscribe(self, on_change: Subscriber, on_error: ErrorSubscriber | None = None) -> bool:
        """Stop handing changes to `on_change`; True when nobody is left (the owner then stops the watch)."""
        if on_change in self.subscribers:
            self.subscribers.remove(on_change)
        if on_error is not None and on_error in self.error_subscribers:
            self.error_subscribers.remove(on_error)
        return not self.subscribers

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=f"kubernetes watch {self.path} {self.params}")
        return self.task

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        while True:
            try:
                if self.resource_version is None or not self.synced:
                    await self.relist()
                productive = await self.watch_once()
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                self._failed(exc)
                if exc.kind == "gone":
                    # The version is too old: the next round lists again, at once unless the last round
                    # failed too (a failure count above one: back off, so 410 after 410 cannot hot-loop).
                    self.resource_version = None
                    if self._failures <= 1:
                        continue
                await asyncio.sleep(self._backoff())
                continue
            except Exception as exc:  # a bug must not end discovery: count it and back off
                log.exception("watch %s failed unexpectedly", self.path)
                self._failed(KubeError("api_error", str(exc)))
                await asyncio.sleep(self._backoff())
                continue
            if productive:
                self._failures = 0
            else:
                # The stream ended at once with nothing in it: treat as a failure, so a server (or a proxy)
                # that closes every watch immediately cannot make us hot-loop.
                self._failures += 1
                await asyncio.sleep(self._backoff())

    async def relist(self) -> None:
        """LIST, replace the objects held, log what went away unseen, hand the result on."""
        version, items = await self.api.list(self.path, self.kind, self.params)
        self.lists += 1
        fresh: Objects = {}
        for item in items:
            if self._selected(item):
                fresh[_name(item)] = item
        gone = sorted(set(self.objects) - set(fresh))
        if gone and self.synced:
            log.info("re-list of %s: %d object(s) deleted while the watch was away: %s", self.path, len(gone),
                     ", ".join(gone))
        self.objects = fresh
        self.resource_version = version
        self.synced = True
        self._deliver()

    async def watch_once(self) -> bool:
        """One WATCH request from the current resourceVersion, applied event by event until the server (or
        our bound on it) ends it. True when it lasted or delivered anything (a healthy watch)."""
        self.watches += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        events = 0
        stream = self.api.watch(self.path, self.kind, self.params, self.resource_version, self.watch_seconds)
        try:
            async with asyncio.timeout(self.watch_seconds + self.watch_grace):
                async for kind, obj, version in stream:
                    events += 1
                    self._apply(kind, obj, version)
        except TimeoutError:
            log.debug("watch %s: no end from the server after %ss; watching again", self.path, self.watch_seconds)
            return True
        finally:
            await stream.aclose()
        return events > 0 or loop.time() - started >= MIN_WATCH

    def _apply(self, kind: str, obj: T | None, version: str | None) -> None:
        if version:
            self.resource_version = version
        if obj is None:  # a bookmark: only the version moves on
            return
        name = _name(obj)
        if kind == "DELETED" or not self._selected(obj):
            # A label change that takes an object out of the selector arrives as MODIFIED: it leaves too.
            if self.objects.pop(name, None) is None:
                return
        elif kind in ("ADDED", "MODIFIED"):
            if self.objects.get(name) == obj:
                return  # a watch restarted by an emulator replays what we hold: nothing changed
            self.objects[name] = obj
        else:
            return
        self._deliver()

    def _selected(self, obj: Any) -> bool:
        """Does `obj` carry the selector's labels? The server filters already; a server (or an emulator) that
        ignores `labelSelector` must not leak other objects in."""
        if not self.selector:
            return True
        labels = obj.metadata.labels or {}
        return all(labels.get(key) == value for key, value in self.selector.items())

    def _deliver(self) -> None:
        snapshot = dict(self.objects)
        for subscriber in list(self.subscribers):
            try:
                subscriber(snapshot)
            except Exception:  # one subscriber's bug must not stop the others or the watch
                log.exception("applying a change of %s failed", self.path)

    def _failed(self, error: KubeError) -> None:
        self.errors += 1
        self.last_error = error.kind
        self._failures += 1
        log.warning("watch %s: %s (%s); %s", self.path, error, error.kind,
                    "keeping the last known objects" if self.synced else "nothing listed yet")
        for on_error in list(self.error_subscribers):
            on_error(error.kind)

    def _backoff(self) -> float:
        delay = min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** min(max(self._failures - 1, 0), 16))
        return max(MIN_DELAY, delay * (1.0 - JITTER * self._random.random()))

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows of this watch."""
        return {
            "path": self.path,
            "label_selector": self.params.get("labelSelector"),
            "synced": self.synced,
            "objects": len(self.objects),
            "resource_version": self.resource_version,
            "lists": self.lists,
            "watches": self.watches,
            "errors": self.errors,
            "last_error": self.last_error,
        }


def _name(obj: Any) -> str:
    return str(obj.metadata.name)


class WatchRegistry:
    """One `ResourceWatch` per distinct (path, selector), shared by its subscribers, over one `KubeApi`."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.watches: dict[tuple[str, tuple[tuple[str, str], ...]], ResourceWatch[Any]] = {}
        # Applied to every watch made from now on (tests shorten them).
        self.watch_seconds = WATCH_SECONDS
        self.watch_grace = WATCH_GRACE
        self.gate: asyncio.Event | None = None

    def subscribe(self, path: str, kind: type[T], selector: dict[str, str], on_change: Subscriber,
                  on_error: ErrorSubscriber | None = None) -> ResourceWatch[T]:
        key = (path, tuple(sorted(selector.items())))
        watch = self.watches.get(key)
        if watch is None:
            watch = ResourceWatch(self.api, path, kind, selector)
            watch.watch_seconds = self.watch_seconds
            watch.watch_grace = self.watch_grace
            watch.gate = self.gate
            self.watches[key] = watch
            watch.start()
        watch.subscribe(on_change, on_error)
        return watch

    def unsubscribe(self, watch: ResourceWatch[Any], on_change: Subscriber,
                    on_error: ErrorSubscriber | None = None) -> None:
        if watch.unsubscribe(on_change, on_error):
            watch.stop()
            self.watches.pop((watch.path, tuple(sorted(watch.selector.items()))), None)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [w.task for w in self.watches.values() if w.task is not None]

    async def close(self) -> None:
        for watch in list(self.watches.values()):
            watch.stop()
        self.watches.clear()
        await self.api.close()

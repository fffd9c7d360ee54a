"""The list -> watch -> 410 -> re-list loop against a scripted API: resuming from the last resourceVersion,
bookmarks, a re-list that drops objects deleted unseen, keeping objects through failures, backoff without a
hot loop, the label filter, and one watch shared by its subscribers. (The same loop runs against kmock, a
real emulated API server, in tests/integration/test_discovery_kubernetes.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from proxy.discovery import kube_watch
from proxy.discovery.kube_api import KubeError
from proxy.discovery.kube_watch import ResourceWatch, WatchRegistry


class Meta:
    def __init__(self, name: str, version: str | None, labels: dict[str, str] | None = None) -> None:
        self.name = name
        self.resourceVersion = version
        self.labels = labels


class Obj:
    def __init__(self, name: str, version: str | None = None, labels: dict[str, str] | None = None,
                 value: int = 0) -> None:
        self.metadata = Meta(name, version, labels)
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Obj) and (self.metadata.name, self.value) == (other.metadata.name, other.value)

    __hash__ = None  # type: ignore[assignment]


class ScriptedApi:
    """Answers LISTs from `objects` and each WATCH with the next scripted step: a list of events, or an
    exception raised when the watch starts."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.version = "10"
        self.watch_steps: list[Any] = []
        self.lists = 0
        self.watch_versions: list[str | None] = []
        self.list_error: KubeError | None = None
        self.server = "scripted"

    async def list(self, path: str, kind: Any, params: dict[str, str]) -> tuple[str | None, list[Obj]]:
        self.lists += 1
        if self.list_error is not None:
            raise self.list_error
        return self.version, list(self.objects.values())

    async def watch(self, path: str, kind: Any, params: dict[str, str], version: str | None,
                    timeout_seconds: int) -> AsyncGenerator[tuple[str, Obj | None, str | None], None]:
        self.watch_versions.append(version)
        step = self.watch_steps.pop(0) if self.watch_steps else "hang"
        if step == "hang":
            await asyncio.sleep(3600)
        if isinstance(step, BaseException):
            raise step
        for event in step:
            yield event

    async def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_watch, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(kube_watch, "MIN_DELAY", 0.01)
    monkeypatch.setattr(kube_watch, "MIN_WATCH", 0.0)


async def run_until(watch: ResourceWatch[Any], check: Any, seconds: float = 3.0) -> None:
    task = watch.start()
    try:
        async with asyncio.timeout(seconds):
            while not check():
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_events_apply_and_the_watch_resumes_from_the_last_version_and_bookmark() -> None:
    api = ScriptedApi()
    api.objects = {"a": Obj("a", "9")}
    api.watch_steps = [
        [("ADDED", Obj("b", "11"), "11"), ("MODIFIED", Obj("a", "12", value=1), "12"), ("BOOKMARK", None, "15")],
        [("DELETED", Obj("b", "16"), "16")],
    ]
    watch: ResourceWatch[Any] = ResourceWatch(api, "/x", object, {})  # type: ignore[arg-type]
    seen: list[dict[str, Any]] = []
    watch.subscribe(seen.append)
    await run_until(watch, lambda: len(api.watch_versions) >= 3)
    assert api.watch_versions[:3] == ["10", "15", "16"] and api.lists == 1
    assert [sorted(s) for s in seen] == [["a"], ["a", "b"], ["a", "b"], ["a"]]
    assert seen[2]["a"].value == 1


async def test_410_relists_at_once_and_drops_what_was_deleted_unseen() -> None:
    api = ScriptedApi()
    api.objects = {"a": Obj("a"), "b": Obj("b")}
    api.watch_steps = [KubeError("gone", "too old", 410)]
    errors: list[str] = []
    watch: ResourceWatch[Any] = ResourceWatch(api, "/x", object, {})  # type: ignore[arg-type]
    seen: list[dict[str, Any]] = []
    watch.subscribe(seen.append, errors.append)

    original_list = api.list

    async def list_then_delete(*args: Any) -> Any:
        result = await original_list(*args)
        api.objects.pop("b", None)  # deleted after the first list, while the watch was away
        return result

    api.list = list_then_delete  # type: ignore[method-assign]
    await run_until(watch, lambda: api.lists >= 2 and len(api.watch_versions) >= 2)
    assert errors == ["gone"]
    assert sorted(seen[0]) == ["a", "b"] and sorted(seen[-1]) == ["a"]
    assert api.watch_versions == ["10", "10"]


async def test_failures_keep_the_objects_and_back_off() -> None:
    api = ScriptedApi()
    api.objects = {"a": Obj("a")}
    api.watch_steps = [KubeError("unreachable", "refused")] * 5
    watch: ResourceWatch[Any] = ResourceWatch(api, "/x", object, {})  # type: ignore[arg-type]
    await run_until(watch, lambda: len(api.watch_versions) >= 6)
    assert list(watch.objects) == ["a"] and watch.errors == 5 and watch.last_error == "unreachable"
    assert api.lists == 1  # an outage does not throw away what was listed
    # The delays double: 0.01, 0.02, 0.04, 0.08, 0.16 (less up to 20 % jitter).
    watch._failures = 5
    assert 0.16 * 0.8 <= watch._backoff() <= 0.16


async def test_repeated_410s_back_off_instead_of_relisting_in_a_loop() -> None:
    api = ScriptedApi()
    api.watch_steps = [KubeError("gone", "too old", 410)] * 3
    watch: ResourceWatch[Any] = ResourceWatch(api, "/x", object, {})  # type: ignore[arg-type]
    await run_until(watch, lambda: len(api.watch_versions) >= 4)
    assert watch._failures == 3 and api.lists == 4


async def test_streams_that_end_at_once_count_as_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    api = ScriptedApi()
    api.watch_steps = [[], [], []]
    watch: ResourceWatch[Any] = ResourceWatch(api, "/x", object, {})  # type: ignore[arg-type]
    monkeypatch.setattr(kube_watch, "MIN_WATCH", 10.0)
    await run_until(watch, lambda: len(api.watch_versions) >= 4)
    assert watch._failures >= 3


async def test_objects_outside_the_selector_are_ignored_and_leave_when_relabelled() -> None:
    api = ScriptedApi()
    api.objects = {"a": Obj("a", labels={"app": "web"}), "x": Obj("x", labels={"app": "other"})}
    api.watch_steps = [[("MODIFIED", Obj("a", "11", labels={"app": "db"}), "11")]]
    watch: ResourceWatch[Any] = ResourceWatch(api, "/x", object, {"app": "web"})  # type: ignore[arg-type]
    seen: list[dict[str, Any]] = []
    watch.subscribe(seen.append)
    await run_until(watch, lambda: len(seen) >= 2)
    assert [sorted(s) for s in seen] == [["a"], []]
    assert watch.params == {"labelSelector": "app=web"}


async def test_the_registry_shares_one_watch_and_stops_it_with_the_last_subscriber() -> None:
    api = ScriptedApi()
    api.objects = {"a": Obj("a")}
    registry = WatchRegistry(api)  # type: ignore[arg-type]
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    one = registry.subscribe("/x", object, {"k": "v"}, first.append)
    await asyncio.sleep(0.05)
    two = registry.subscribe("/x", object, {"k": "v"}, second.append)
    assert one is two and len(registry.watches) == 1
    assert second == first  # the late subscriber got the listed objects at once
    other = registry.subscribe("/x", object, {"k": "w"}, first.append)
    assert other is not one
    registry.unsubscribe(one, first.append)
    assert one.task is not None
    registry.unsubscribe(two, second.append)
    assert one.task is None and len(registry.watches) == 1
    await registry.close()
    assert registry.watches == {}

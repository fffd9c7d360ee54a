"""Reading a running sidecar's admin endpoints from tests: metric sums, /clusters views."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=5)


async def admin_json(running: Any, path: str) -> Any:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, \
            session.get(running.admin_url(path)) as reply:
        return await reply.json()


async def metric(running: Any, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`, from the admin /metrics."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session, \
            session.get(running.admin_url("/metrics")) as reply:
        text = await reply.text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def endpoint_view(running: Any, address: str, cluster: str = "backend") -> dict[str, Any]:
    """One endpoint's entry in /clusters."""
    clusters = (await admin_json(running, "/clusters"))["clusters"]
    [view] = [e for c in clusters if c["name"] == cluster for e in c["endpoints"] if e["address"] == address]
    return view  # type: ignore[no-any-return]

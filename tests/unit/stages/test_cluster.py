"""The cluster stage, with fake streams in virtual time: the bulkhead's admission and the balancer's pick."""

from __future__ import annotations

import asyncio

import pytest

from proxy.local_reply import Cause
from proxy.stream import CLIENT_GONE
from tests.unit.stages.fakes import COMPILED, Harness, ok, one_route, stalled

pytestmark = pytest.mark.skipif(COMPILED, reason="fake streams subclass native classes (interpreted pass only)")


async def test_a_full_bulkhead_refuses_at_once_beyond_max_pending() -> None:
    harness = Harness(one_route(cluster="    limits: {max_requests: 1, max_pending: 0, pending_timeout: 1s}"))
    harness.seed("backend", stalled())
    busy = harness.start()
    await asyncio.sleep(0)
    refused = await harness.serve()
    assert refused.reply is not None and refused.reply.head.status == 503
    assert b"cluster backend: max_requests" in refused.reply.body
    assert harness.last["cause"] is Cause.CLUSTER_LIMIT and harness.last["cluster"] == "backend"
    busy.cancel(CLIENT_GONE)
    await busy.task  # type: ignore[misc]


async def test_a_pending_request_gives_up_after_the_pending_timeout() -> None:
    harness = Harness(one_route(cluster="    limits: {max_requests: 1, max_pending: 1, pending_timeout: 1s}"))
    harness.seed("backend", stalled())
    busy = harness.start()
    await asyncio.sleep(0)
    waiting = harness.start()
    await harness.clock.elapse(0.9)
    assert not waiting.response_started
    await harness.clock.elapse(0.2)
    await waiting.task  # type: ignore[misc]
    assert waiting.reply is not None and waiting.reply.head.status == 503
    assert harness.last["cause"] is Cause.PENDING_TIMEOUT
    busy.cancel(CLIENT_GONE)
    await busy.task  # type: ignore[misc]


async def test_a_pending_request_runs_when_a_slot_frees() -> None:
    harness = Harness(one_route(cluster="    limits: {max_requests: 1, max_pending: 1, pending_timeout: 5s}"))
    harness.seed("backend", ok(), stalled())
    busy = harness.start()
    await asyncio.sleep(0)
    waiting = harness.start()
    await harness.clock.elapse(1.0)
    busy.cancel(CLIENT_GONE)
    await busy.task  # type: ignore[misc]
    await asyncio.wait_for(waiting.task, 1)  # type: ignore[arg-type]
    assert waiting.response is not None and waiting.response.status == 200


async def test_no_endpoint_is_a_503_unavailable() -> None:
    harness = Harness(one_route(endpoints="[]"))
    request = await harness.serve()
    assert request.reply is not None and request.reply.head.status == 503
    assert harness.last["cause"] is Cause.UNAVAILABLE and harness.last["attempts"] == 1

"""Build hook: with HORIZON_SIDECAR_COMPILE=1, the request path's modules are compiled to C with mypyc.

Everything else about the package (metadata, dependencies, entry points) is in pyproject.toml. The compiled
build is what ships (Dockerfile) and what `benchmarks/` measures; the plain build (the default, and what
`pip install -e .` gives) runs the same source interpreted, so a change to a .py file is live at once and
no stale compiled module can shadow it. Why mypyc and which modules: docs/decisions/0008-compiled-request-path.md.
"""

from __future__ import annotations

import os

from setuptools import setup

# The modules a request runs through, and the pure policy cores they call per request. Not compiled:
# config (pydantic), the assembly and control paths (app, runtime, cli, admin, discovery), and modules
# whose speed does not matter per request.
COMPILED_MODULES = [
    "proxy/clock.py",
    "proxy/errors.py",
    "proxy/local_reply.py",
    "proxy/message.py",
    "proxy/outbound.py",
    "proxy/stages/attempt.py",
    "proxy/stages/cluster.py",
    "proxy/stages/context.py",
    "proxy/stages/edge.py",
    "proxy/stages/path.py",
    "proxy/stages/retry.py",
    "proxy/stages/route.py",
    "proxy/stream.py",
    "proxy/filters/apikey.py",
    "proxy/filters/authz.py",
    "proxy/filters/check.py",
    "proxy/filters/headers.py",
    "proxy/filters/ratelimit.py",
    "proxy/filters/trace.py",
    "proxy/http/authority.py",
    "proxy/http/client.py",
    "proxy/http/h2_client.py",
    "proxy/http/h2_engine.py",
    "proxy/http/h2_fields.py",
    "proxy/http/h2_flow.py",
    "proxy/http/h2_server.py",
    "proxy/http/hpack_decoder.py",
    "proxy/http/hpack_encoder.py",
    "proxy/http/headers.py",
    "proxy/http/path.py",
    "proxy/http/request_head.py",
    "proxy/http/server.py",
    "proxy/http/settings.py",
    "proxy/resilience/breaker.py",
    "proxy/resilience/budget.py",
    "proxy/resilience/classify.py",
    "proxy/resilience/limits.py",
    "proxy/resilience/retry.py",
    "proxy/resilience/timeout.py",
    "proxy/routing/match.py",
    "proxy/routing/regex.py",
    "proxy/routing/split.py",
    "proxy/routing/table.py",
    "proxy/telemetry/cells.py",
    "proxy/telemetry/metrics.py",
    "proxy/telemetry/record.py",
    "proxy/upstream/balancer.py",
    "proxy/upstream/cluster.py",
    "proxy/upstream/endpoint.py",
    "proxy/upstream/pool.py",
]


def _ext_modules() -> list[object]:
    if os.environ.get("HORIZON_SIDECAR_COMPILE", "0") != "1":
        return []
    from mypyc.build import mypycify  # only a compiled build needs mypy (buildsys/horizon_build.py asks for it)

    return list(mypycify(COMPILED_MODULES, opt_level="3"))


setup(ext_modules=_ext_modules())

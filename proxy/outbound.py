"""The wiring of the request path: a listener's routes compiled into stages, once per config.

Owns `build_router`, the only place that composes the stages (`proxy/stages/`): for each route of a
listener, its `RouteStage` (authorization: `authz` then `api_key`; rate limit, fault, split, rewrite,
header rules, route deadline), its `RetryLoop` when it has a retry policy, one `ClusterStage` per cluster
of its split, and the bound metric children each needs; every cluster stage of a router shares one `EndpointAttempt` and
one deadline timer wheel. All of it is built when a config is loaded or reloaded, never per request;
`proxy.stages.path.RequestPath` runs it. docs/architecture.md draws the order and says why.
Must not parse bytes (the codec does) or hold policy state of its own (the concern packages do).
"""

from __future__ import annotations

from proxy.clock import Clock
from proxy.config.model import RouteConfig
from proxy.filters.apikey import ApiKeyCheck
from proxy.filters.authz import AuthzCheck
from proxy.filters.check import RequestCheck, all_of
from proxy.filters.headers import HeaderRewriter
from proxy.filters.keysfile import KeyStores
from proxy.filters.ratelimit import RateLimiter
from proxy.filters.rewrite import Rewriter
from proxy.resilience.fault import FaultInjector
from proxy.resilience.retry import CompiledRetryPolicy
from proxy.resilience.timeout import DeadlineTimers
from proxy.routing.table import RouteTable
from proxy.stages.attempt import EndpointAttempt
from proxy.stages.cluster import ClusterStage
from proxy.stages.context import RequestContext
from proxy.stages.retry import RetryLoop
from proxy.stages.route import Router, RouteStage
from proxy.stream import CancelReason
from proxy.telemetry.metrics import Metrics
from proxy.upstream.cluster import Cluster


def build_router(listener_name: str, table: RouteTable, clusters: dict[str, Cluster], metrics: Metrics,
                 clock: Clock, keys: KeyStores | None = None) -> Router:
    """Compile every route of a listener once: its hooks, header rules, rewrite, retry loop, the cluster
    stages of its split and the metric children each needs. `keys` holds the API keys files routes name (the
    running App's, watched; without one, each file is read now and not watched)."""
    if keys is None:
        keys = KeyStores()
    # Route and per-try deadlines share one timer wheel (a loop timer per deadline cost ~7 % of a request).
    deadlines: DeadlineTimers[RequestContext, CancelReason] = DeadlineTimers(clock)
    attempt = EndpointAttempt(clock, deadlines)
    stages: list[RouteStage] = []
    for route in table.routes:
        config = route.config
        targets = {
            name: ClusterStage(clusters[name], metrics.for_route(listener_name, route.name, name),
                               metrics.retries(route.name, name), attempt)
            for name in route.split.names
        }
        stage = RouteStage(route.name, route.split, targets, metrics.for_route(listener_name, route.name, ""),
                           clock, deadlines)
        stage.set_timeout(config.timeout)
        stage.authorization = authorization(config, keys)
        rules = config.headers
        stage.request_rules = HeaderRewriter.from_config(rules.request if rules else None)
        stage.response_rules = HeaderRewriter.from_config(rules.response if rules else None)
        stage.rewriter = Rewriter.from_config(config.rewrite, config.match)
        if config.retries is not None and config.retries.attempts > 0:
            stage.retry = RetryLoop(CompiledRetryPolicy.from_config(config.retries, clock), clock)
        if config.rate_limit is not None:
            stage.rate_limiter = RateLimiter.from_config(config.rate_limit, clock)
            stage.rate_limited = metrics.rate_limited(listener_name, route.name)
        stage.fault = FaultInjector.from_config(config.fault, clock.random)
        stages.append(stage)
    return Router(table, stages, metrics.for_local(listener_name))


def authorization(config: RouteConfig, keys: KeyStores) -> RequestCheck | None:
    """A route's checks of who may call it, in order: `authz` (the peer identity), then `api_key`. None for a
    route with neither, which then pays nothing for them per request."""
    checks: list[RequestCheck] = []
    authz = AuthzCheck.from_config(config.authz, config.name)
    if authz is not None:
        checks.append(authz)
    if config.api_key is not None:
        checks.append(ApiKeyCheck.from_config(config.api_key, keys.store(config.api_key.keys_file), config.name))
    return all_of(checks)

"""The frozen configuration model: one class per YAML mapping of the config contract.

Owns the schema: key names (exactly the YAML keys), types, defaults and per-field checks (durations,
sizes, addresses, regexes, weights). Durations become float seconds, sizes int bytes, addresses
`Address`; regexes are RE2, compiled by `compile_regex` for the schema and the matchers alike.
Cross-references between sections are checked in `validate.py`; YAML and line numbers are `load.py`'s.
Must not import runtime code: each runtime owner compiles what it needs from here once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2,
               "GB": 1000**3}


def parse_duration(value: Any) -> float:
    """'250ms' | '2s' | '1m' | '1h' -> seconds. A bare number is refused: the unit is part of the value."""
    if isinstance(value, bool) or not isinstance(value, str):
        if value == 0 and not isinstance(value, bool):
            return 0.0
        raise ValueError(f"a duration needs a unit, like '250ms' or '2s' (got {value!r})")
    found = _DURATION.match(value)
    if not found:
        raise ValueError(f"bad duration {value!r}: use a number with ms, s, m or h, like '250ms'")
    return float(found.group(1)) * _DURATION_UNITS[found.group(2)]


def parse_size(value: Any) -> int:
    """'64KiB' | '1MiB' | 1024 -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"bad size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative (got {value})")
        return value
    if not isinstance(value, str):
        raise ValueError(f"bad size {value!r}: use bytes or a unit, like '64KiB'")
    found = _SIZE.match(value)
    if not found:
        raise ValueError(f"bad size {value!r}: use a number with B, KiB, MiB or GiB, like '64KiB'")
    return int(found.group(1)) * _SIZE_UNITS[found.group(2)]


def compile_regex(pattern: str) -> Any:
    """`pattern` compiled as every matcher runs it: RE2 (linear time; Envoy's engine), no capture groups (a
    matcher only asks yes or no). Raises ValueError saying what RE2 refuses, in the user's terms. The schema
    and the matchers (proxy.routing.regex) both compile here, so `validate` refuses exactly what `run` would.
    """
    options = re2.Options()
    options.never_capture = True
    options.log_errors = False  # RE2 would print each refusal to stderr; the error is reported instead
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b""
        detail = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        raise ValueError(f"bad regex {pattern!r}: {_re2_refusal(pattern, detail)}") from None


def _re2_refusal(pattern: str, detail: str) -> str:
    """RE2's complaint, said plainly for the two features users most often bring from other engines."""
    if re.fullmatch(r"invalid escape sequence: \\[1-9k]", detail) or (
            detail == "invalid perl operator: (?P" and "(?P=" in pattern):
        what = "backreferences (\\1, (?P=name), \\k<name>)"
    elif re.fullmatch(r"invalid perl operator: \(\?<?[=!]", detail):
        what = "lookahead and lookbehind ((?=, (?!, (?<=, (?<!)"
    else:
        return f"not RE2 syntax: {detail}"
    return f"{what} are not RE2 syntax (RE2 matches in linear time, so it has neither backreferences nor lookaround)"


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class Address(BaseModel):
    """host:port; '[::1]:8080' for IPv6; port 0 = pick a free port."""

    model_config = ConfigDict(frozen=True)
    host: str
    port: int

    @classmethod
    def parse(cls, value: Any) -> Address:
        if isinstance(value, Address):
            return value
        if not isinstance(value, str):
            raise ValueError(f"an address is a 'host:port' string (got {value!r})")
        text = value.strip()
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or not text[close + 1:].startswith(":"):
                raise ValueError(f"bad IPv6 address {value!r}: use '[::1]:8080'")
            host, port_text = text[1:close], text[close + 2:]
            if not host:
                raise ValueError(f"bad IPv6 address {value!r}: use '[::1]:8080'")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host or ":" in host:
                raise ValueError(f"bad address {value!r}: use 'host:port' ('[::1]:8080' for IPv6)")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"bad port in {value!r}: a number from 0 to 65535")
        return cls(host=host, port=int(port_text))

    def __str__(self) -> str:
        return host_port(self.host, self.port)


def host_port(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets: how addresses are written in configs, logs and metrics."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


AddressField = Annotated[Address, BeforeValidator(Address.parse)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class NodeConfig(_Model):
    service: str | None = None
    namespace: str | None = None
    # This node's zone: clusters prefer endpoints in it (topology-aware routing). Unset: read from the Node
    # (label topology.kubernetes.io/zone) when $NODE_NAME is set and RBAC allows, else no preference.
    zone: str | None = Field(default=None, min_length=1)


# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_name(value: str) -> str:
    """A header name, lower-cased (header names are case-insensitive)."""
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"bad header name {value!r}: a name only, like 'x-version'")
    return value.lower()


def _query_name(value: str) -> str:
    if not value:
        raise ValueError("a query parameter name must not be empty")
    return value


class ConfigDumpConfig(_Model):
    """What /config_dump may show: header and query values the config sets or matches are redacted unless
    their name is listed here (header names case-insensitively; query parameter names exactly, as routes
    match them)."""

    public_headers: list[Annotated[str, AfterValidator(_header_name)]] = Field(default_factory=list)
    public_query_params: list[Annotated[str, AfterValidator(_query_name)]] = Field(default_factory=list)


class AdminConfig(_Model):
    address: AddressField = Field(default_factory=lambda: Address(host="127.0.0.1", port=15000))
    config_dump: ConfigDumpConfig = Field(default_factory=ConfigDumpConfig)


class Http2Config(_Model):
    """HTTP/2 on a listener's port: its limits."""

    max_concurrent_streams: int = Field(default=100, ge=1)
    # The connection window is 16 stream windows, and no HTTP/2 window may pass 2^31 - 1: at most 128 MiB - 1.
    initial_stream_window: Size = Field(default=64 * 1024, ge=1, le=(2**31 - 1) // 16)
    max_resets_per_second: int = Field(default=100, ge=1)


class HttpConfig(_Model):
    max_request_headers: Size = 60 * 1024
    max_headers: int = Field(default=100, ge=1)
    header_read_timeout: Duration = 10.0
    idle_timeout: Duration = 300.0
    stream_idle_timeout: Duration = 300.0
    max_request_body: Size = 0
    max_requests_in_flight: int = Field(default=10000, ge=0)
    path_normalization: Literal["base", "merge_slashes", "decode_and_merge_slashes", "none"] = "base"
    http2: Http2Config | None = None


class ListenerTlsConfig(_Model):
    cert: str
    key: str
    ca: str | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> ListenerTlsConfig:
        # Without a CA there is nothing to verify a client certificate against.
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca (the CA that client certificates must chain to)")
        return self


class StringMatcherConfig(_Model):
    """Exactly one of exact / prefix / regex / present."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StringMatcherConfig:
        given = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of exact, prefix, regex, present")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_regex(value)
        return value


class RouteMatchConfig(_Model):
    host: str | None = None
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    headers: dict[str, StringMatcherConfig] = Field(default_factory=dict)
    query: dict[str, StringMatcherConfig] = Field(default_factory=dict)
    methods: list[str] | None = None
    # The caller's SPIFFE ID (verified client certificate on a TLS listener; absent without one).
    peer_identity: StringMatcherConfig | None = None

    @model_validator(mode="after")
    def _one_path_kind(self) -> RouteMatchConfig:
        given = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError("give at most one of exact, prefix, regex")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return StringMatcherConfig._compiles(value)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("methods must not be empty (omit it to match any method)")
            for method in value:
                if not re.fullmatch(r"[A-Za-z]+", method):
                    raise ValueError(f"bad method {method!r}")
            return [m.upper() for m in value]
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (not value.removeprefix("*.") or "*" in value.removeprefix("*.")):
            raise ValueError(f"bad host {value!r}: an exact name or a leading '*.' wildcard")
        return value


class SplitEntryConfig(_Model):
    cluster: str
    weight: int = Field(gt=0)


class BackoffConfig(_Model):
    """Either full-jitter exponential (base, max) or a fixed schedule."""

    base: Duration | None = None
    max: Duration | None = None
    schedule: list[Duration] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> BackoffConfig:
        exponential = self.base is not None or self.max is not None
        if exponential and self.schedule is not None:
            raise ValueError("give either base/max or schedule, not both")
        if self.schedule is not None and not self.schedule:
            raise ValueError("schedule must not be empty")
        if self.base is not None and self.max is not None and self.max < self.base:
            raise ValueError("max must be at least base")
        return self


class RetryBudgetConfig(_Model):
    ratio: float = Field(default=0.2, ge=0)
    min_per_second: float = Field(default=10, ge=0)
    max_concurrent: int = Field(default=50, ge=0)


RETRY_CONDITIONS = ("connect-failure", "reset", "gateway-error", "5xx", "retriable-4xx")
# gRPC requests also retry on these grpc-status names (Envoy's and Istio's `retry_on` spellings).
GRPC_RETRY_CONDITIONS = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")


class RetryPolicyConfig(_Model):
    attempts: int = Field(default=1, ge=0)
    per_try_timeout: Duration | None = None
    on: list[str] = Field(default_factory=lambda: ["connect-failure", "reset", "gateway-error"])
    # Built from strings: parse_duration refuses bare numbers, so BackoffConfig(base=0.025) would always fail.
    backoff: BackoffConfig = Field(
        default_factory=lambda: BackoffConfig.model_validate({"base": "25ms", "max": "250ms"}))
    budget: RetryBudgetConfig = Field(default_factory=RetryBudgetConfig)
    replay_buffer: Size = 64 * 1024
    max_retry_after: Duration = 5.0

    @field_validator("on", mode="before")
    @classmethod
    def _conditions(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            text = str(item)
            if (text not in RETRY_CONDITIONS and text not in GRPC_RETRY_CONDITIONS
                    and not (text.isdigit() and 100 <= int(text) <= 599)):
                raise ValueError(f"unknown retry condition {item!r}: use "
                                 f"{', '.join(RETRY_CONDITIONS + GRPC_RETRY_CONDITIONS)} or a status code")
            out.append(text)
        return out


class RateLimitKeyConfig(_Model):
    header: str


# `rate_limit.key: peer_identity`: one bucket per caller SPIFFE ID.
PEER_IDENTITY_KEY = "peer_identity"


def _rate_limit_key_kind(value: Any) -> str:
    # Which form the user meant, so that only its errors are reported (a typo in `peer_identity` is not
    # also "must be a mapping", nor is a bad mapping also "must be 'peer_identity'").
    return "name" if isinstance(value, str) else "header"


RateLimitKey = Annotated[
    Annotated[RateLimitKeyConfig, Tag("header")] | Annotated[Literal["peer_identity"], Tag("name")],
    Discriminator(_rate_limit_key_kind),
]


class RateLimitConfig(_Model):
    requests_per_second: float = Field(gt=0)
    burst: int = Field(gt=0)
    # {header: name}: one bucket per value of that header; `peer_identity`: one per caller SPIFFE ID.
    key: RateLimitKey | None = None
    max_keys: int = Field(default=10000, ge=1)


class FaultDelayConfig(_Model):
    fixed: Duration
    percent: float = Field(ge=0, le=100)


class FaultAbortConfig(_Model):
    status: int = Field(ge=200, le=599)
    percent: float = Field(ge=0, le=100)


class FaultConfig(_Model):
    delay: FaultDelayConfig | None = None
    abort: FaultAbortConfig | None = None


class HeaderOpsConfig(_Model):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)


class HeaderRulesConfig(_Model):
    request: HeaderOpsConfig | None = None
    response: HeaderOpsConfig | None = None


class RewriteConfig(_Model):
    prefix: str | None = None
    host: str | None = None


class AuthzConfig(_Model):
    """SPIFFE IDs that may call a route (`*` stands for one whole path segment); `deny_identities` wins.
    The entries' syntax is checked by their owner (proxy.filters.authz), through `validate.py`."""

    allow_identities: list[str]
    deny_identities: list[str] = Field(default_factory=list)


class ApiKeyConfig(_Model):
    """A route that requires an API key in `header`; `keys_file` is a YAML map of the SHA-256 hex digest of
    each allowed key to the name of the service it belongs to (read and checked by proxy.filters.keysfile)."""

    header: Annotated[str, AfterValidator(_header_name)]
    keys_file: str

    @field_validator("keys_file")
    @classmethod
    def _file(cls, value: str) -> str:
        if not value:
            raise ValueError("keys_file must name a file")
        return value


class RouteConfig(_Model):
    name: str
    match: RouteMatchConfig = Field(default_factory=RouteMatchConfig)
    cluster: str | None = None
    split: list[SplitEntryConfig] | None = None
    timeout: Duration | None = None
    retries: RetryPolicyConfig | None = None
    rate_limit: RateLimitConfig | None = None
    fault: FaultConfig | None = None
    headers: HeaderRulesConfig | None = None
    rewrite: RewriteConfig | None = None
    authz: AuthzConfig | None = None
    api_key: ApiKeyConfig | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RouteConfig:
        if (self.cluster is None) == (self.split is None):
            raise ValueError("give exactly one of cluster or split")
        if self.split is not None and not self.split:
            raise ValueError("split must name at least one cluster")
        return self


class ListenerConfig(_Model):
    name: str
    address: AddressField
    http: HttpConfig = Field(default_factory=HttpConfig)
    tls: ListenerTlsConfig | None = None
    routes: list[RouteConfig] = Field(default_factory=list)


class KubernetesDiscoveryConfig(_Model):
    service: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    # A port name (the Service's, as EndpointSlices name their ports) or the endpoints' port number.
    port: Annotated[int, Field(ge=1, le=65535)] | Annotated[str, Field(min_length=1)]
    labels: dict[str, str] = Field(default_factory=dict)


class DnsDiscoveryConfig(_Model):
    name: str
    port: int = Field(ge=1, le=65535)
    refresh: Duration = 30.0


class DiscoveryConfig(_Model):
    kubernetes: KubernetesDiscoveryConfig | None = None
    dns: DnsDiscoveryConfig | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> DiscoveryConfig:
        if (self.kubernetes is None) == (self.dns is None):
            raise ValueError("give exactly one of kubernetes or dns")
        return self


class ClusterTlsConfig(_Model):
    cert: str | None = None
    key: str | None = None
    ca: str
    expect_identity: str | None = None
    server_name: str | None = None

    @field_validator("expect_identity")
    @classmethod
    def _spiffe_id(cls, value: str | None) -> str | None:
        # Compared exactly with the upstream certificate's URI SAN: anything else could never match.
        if value is not None and (not value.startswith("spiffe://") or "/" not in value[len("spiffe://"):]):
            raise ValueError("expect_identity must be a SPIFFE ID: spiffe://<trust domain>/<path>")
        return value

    @model_validator(mode="after")
    def _cert_with_key(self) -> ClusterTlsConfig:
        # A client certificate is useless without its key, and a key alone presents nothing.
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key (a client certificate and its private key), or neither")
        return self


class CircuitBreakerConfig(_Model):
    min_requests: int = Field(default=5, ge=1)
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    interval: Duration = 10.0
    open_timeout: Duration = 30.0
    half_open_requests: int = Field(default=1, ge=1)


class LimitsConfig(_Model):
    max_requests: int = Field(default=1024, ge=1)
    max_pending: int = Field(default=1024, ge=0)
    pending_timeout: Duration = 1.0


class OutlierDetectionConfig(_Model):
    consecutive_5xx: int = Field(default=5, ge=1)
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_percent: float = Field(default=10, ge=0, le=100)


class HealthCheckConfig(_Model):
    """Active health checks of a cluster's endpoints (`proxy.upstream.health`). Defaults: the config
    contract's example, `{interval: 5s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 3}`."""

    # What is asked: `GET <path>`, a 2xx answer passes; or, for a gRPC server, gRPC's health protocol
    # (`grpc.health.v1.Health/Check` of this service, "" for the whole server), SERVING passes. One of the two.
    path: str | None = None
    grpc_service: str | None = None
    # How often every endpoint is checked (each round starts up to 10 % early: jitter).
    interval: Duration = 5.0
    # The bound on one check: connect (and TLS handshake), request, status line.
    timeout: Duration = 1.0
    # Consecutive passes that make an unhealthy endpoint healthy again.
    healthy_threshold: int = Field(default=2, ge=1)
    # Consecutive failures that make a healthy endpoint unhealthy.
    unhealthy_threshold: int = Field(default=3, ge=1)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith("/"):
            raise ValueError(f"path must start with '/' (got {value!r})")
        if not value.isascii() or any(c <= " " or c == "\x7f" for c in value):
            raise ValueError(f"path must be ASCII without spaces or control characters (got {value!r})")
        return value

    @field_validator("interval", "timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0")
        return value

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> HealthCheckConfig:
        if (self.path is None) == (self.grpc_service is None):
            raise ValueError("give exactly one of path (an HTTP GET) or grpc_service (gRPC health checking)")
        if self.timeout > self.interval:
            raise ValueError("timeout must not be longer than interval")
        return self


class PoolConfig(_Model):
    max_idle_per_endpoint: int = Field(default=64, ge=0)
    idle_timeout: Duration = 60.0
    max_requests_per_connection: int = Field(default=0, ge=0)


LoadBalancer = Literal["round_robin", "least_request", "peak_ewma", "ring_hash"]


class RingHashConfig(_Model):
    """What `ring_hash` hashes a request on: one header, one cookie, or the client's IP."""

    header: str | None = None
    cookie: str | None = None
    source_ip: bool = False

    @model_validator(mode="after")
    def _one_key(self) -> RingHashConfig:
        if (self.header is not None) + (self.cookie is not None) + self.source_ip != 1:
            raise ValueError("give exactly one of header, cookie or source_ip: true")
        return self


class StaticEndpointConfig(_Model):
    """A static endpoint: `"host:port"`, or `{address, weight, zone}` for weighted or zoned endpoints."""

    address: AddressField
    # Relative share for balancers that weigh endpoints (Envoy's load_balancing_weight; 1 to 128, as Envoy's).
    weight: int = Field(default=1, ge=1, le=128)
    # The endpoint's zone, for zone-aware routing (node.zone).
    zone: str | None = Field(default=None, min_length=1)


def _static_endpoint(value: Any) -> Any:
    # "host:port" is shorthand for {address: "host:port"}; parsed here so its errors name the entry itself.
    if isinstance(value, str):
        return StaticEndpointConfig(address=Address.parse(value))
    return value


StaticEndpoint = Annotated[StaticEndpointConfig, BeforeValidator(_static_endpoint)]


class ClusterConfig(_Model):
    name: str
    endpoints: list[StaticEndpoint] | None = None
    discovery: DiscoveryConfig | None = None
    load_balancer: LoadBalancer = "round_robin"
    # `load_balancer: {ring_hash: {...}}` arrives here (and `load_balancer` reads ring_hash); plain
    # `ring_hash` without a key hashes nothing: every request goes to a random endpoint (as Envoy's).
    ring_hash: RingHashConfig | None = None
    # A new endpoint's weight ramps from 10 % to full over this (round robin, least request, peak EWMA).
    slow_start: Duration | None = None
    connect_timeout: Duration = 5.0
    protocol: Literal["http1", "http2", "auto"] = "http1"
    # The upstream's status line + headers (and, separately, its trailers): 502 beyond either bound.
    max_response_headers: Size = Field(default=60 * 1024, ge=1)
    max_response_header_count: int = Field(default=100, ge=1)
    tls: ClusterTlsConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    limits: LimitsConfig | None = None
    outlier_detection: OutlierDetectionConfig | None = None
    # Active health checks (None: none; an endpoint is routable unless something else takes it out).
    health_check: HealthCheckConfig | None = None
    pool: PoolConfig = Field(default_factory=PoolConfig)

    @model_validator(mode="before")
    @classmethod
    def _balancer_with_settings(cls, data: object) -> object:
        if isinstance(data, dict):
            balancer = data.get("load_balancer")
            if isinstance(balancer, dict) and list(balancer) == ["ring_hash"]:
                return {**data, "load_balancer": "ring_hash", "ring_hash": balancer["ring_hash"] or {}}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ClusterConfig:
        if (self.endpoints is None) == (self.discovery is None):
            raise ValueError("give exactly one of endpoints or discovery")
        if self.health_check is not None and self.health_check.grpc_service is not None and self.protocol == "http1":
            raise ValueError("health_check.grpc_service needs protocol: http2 (or auto with tls): gRPC is HTTP/2")
        return self


class OtlpConfig(_Model):
    endpoint: str


Propagation = Literal["w3c", "b3"]


def _w3c_only() -> list[Propagation]:
    # A typed factory: mypy infers a bare `lambda: ["w3c"]` as list[str].
    return ["w3c"]


class TracingConfig(_Model):
    propagation: list[Propagation] = Field(default_factory=_w3c_only)
    sampling: float = Field(default=0.01, ge=0, le=1)
    otlp: OtlpConfig | None = None


class AccessLogConfig(_Model):
    format: Literal["json", "text"] = "json"
    # stdout, stderr, or a file (relative to the config file's directory), reopened on SIGUSR1.
    path: str = "stdout"
    # The share of successful requests logged; errors (>= 400, resets, local replies) always are.
    success_sample: float = Field(default=1.0, ge=0, le=1)


class Config(_Model):
    node: NodeConfig = Field(default_factory=NodeConfig)
    workers: int | Literal["auto"] = 1
    drain_delay: Duration = 0.0
    drain_timeout: Duration = 30.0
    admin: AdminConfig = Field(default_factory=AdminConfig)
    listeners: list[ListenerConfig] = Field(default_factory=list)
    clusters: list[ClusterConfig] = Field(default_factory=list)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    access_log: AccessLogConfig | None = None

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("workers must be at least 1 (or 'auto')")
        return value

"""Schema checks of proxy.config.model that the loader tests do not already cover: RE2 regexes, the
listener's `http.path_normalization`, a cluster's TLS identity and `health_check`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.config.model import (
    ClusterConfig,
    ClusterTlsConfig,
    HealthCheckConfig,
    Http2Config,
    HttpConfig,
    RouteMatchConfig,
    StringMatcherConfig,
    compile_regex,
)


@pytest.mark.parametrize(("pattern", "says"), [
    (r"(a)\1", "backreferences"),
    (r"(?P<n>a)(?P=n)", "backreferences"),
    (r"\k<n>", "backreferences"),
    (r"(?=x)", "lookahead and lookbehind"),
    (r"(?!x)", "lookahead and lookbehind"),
    (r"a(?<=a)", "lookahead and lookbehind"),
    (r"(?<!a)b", "lookahead and lookbehind"),
])
def test_re2_refusals_are_said_plainly(pattern: str, says: str) -> None:
    with pytest.raises(ValueError, match="bad regex") as refused:
        compile_regex(pattern)
    assert says in str(refused.value) and "RE2" in str(refused.value)


def test_other_refusals_carry_re2s_reason() -> None:
    with pytest.raises(ValueError, match=r"bad regex '\(a': not RE2 syntax: missing \)"):
        compile_regex("(a")


def test_every_regex_key_is_checked_with_re2() -> None:
    for build in (lambda: RouteMatchConfig(regex=r"(a)\1"), lambda: StringMatcherConfig(regex="(?=x)")):
        with pytest.raises(ValidationError, match="not RE2 syntax"):
            build()
    # RE2 syntax that Python's `re` does not know is accepted.
    assert RouteMatchConfig(regex=r"/\pL+/[[:digit:]]+").regex


def test_path_normalization_is_base_by_default_and_one_of_istios_names() -> None:
    assert HttpConfig().path_normalization == "base"
    assert HttpConfig(path_normalization="decode_and_merge_slashes").path_normalization == "decode_and_merge_slashes"
    with pytest.raises(ValidationError):
        HttpConfig(path_normalization="BASE")  # type: ignore[arg-type]


@pytest.mark.parametrize("identity", ["campaign-service", "spiffe://cluster.local", "https://cluster.local/ns/a"])
def test_a_clusters_expect_identity_must_be_a_spiffe_id(identity: str) -> None:
    with pytest.raises(ValidationError, match="expect_identity must be a SPIFFE ID"):
        ClusterTlsConfig(ca="ca.pem", expect_identity=identity)
    assert ClusterTlsConfig(ca="ca.pem", expect_identity="spiffe://cluster.local/ns/a/sa/b").expect_identity


def test_health_check_defaults_are_the_contracts_example() -> None:
    check = HealthCheckConfig(path="/healthz")
    assert (check.interval, check.timeout, check.healthy_threshold, check.unhealthy_threshold) == (5.0, 1.0, 2, 3)
    cluster = ClusterConfig.model_validate({"name": "c", "endpoints": ["127.0.0.1:1"]})
    assert cluster.health_check is None


@pytest.mark.parametrize(("settings", "says"), [
    ({"path": "healthz"}, "path must start with '/'"),
    ({"path": "/a b"}, "without spaces"),
    ({"path": "/h\u00e9"}, "ASCII"),
    ({"path": "/healthz", "interval": "0s"}, "more than 0"),
    ({"path": "/healthz", "timeout": "0s"}, "more than 0"),
    ({"path": "/healthz", "interval": "1s", "timeout": "2s"}, "timeout must not be longer than interval"),
    ({"path": "/healthz", "healthy_threshold": 0}, "greater than or equal to 1"),
    ({"path": "/healthz", "unhealthy_threshold": 0}, "greater than or equal to 1"),
    ({"interval": "1s"}, "exactly one of path"),
    ({"path": "/healthz", "grpc_service": ""}, "exactly one of path"),
])
def test_health_check_settings_are_checked(settings: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        HealthCheckConfig.model_validate(settings)


def test_an_http2_stream_window_keeps_the_connection_window_under_2_to_the_31() -> None:
    # The connection window is 16 stream windows; no HTTP/2 window may pass 2^31 - 1.
    assert Http2Config.model_validate({"initial_stream_window": 134217727}).initial_stream_window == 134217727
    with pytest.raises(ValidationError, match="134217727"):
        Http2Config.model_validate({"initial_stream_window": "128MiB"})


def test_a_grpc_health_check_needs_an_http2_cluster() -> None:
    check = {"grpc_service": "svc.Echo"}
    cluster = ClusterConfig.model_validate({"name": "c", "endpoints": ["127.0.0.1:1"], "protocol": "http2",
                                            "health_check": check})
    assert cluster.health_check is not None and cluster.health_check.grpc_service == "svc.Echo"
    with pytest.raises(ValidationError, match="grpc_service needs protocol: http2"):
        ClusterConfig.model_validate({"name": "c", "endpoints": ["127.0.0.1:1"], "health_check": check})

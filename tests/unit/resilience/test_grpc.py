"""gRPC facts: content types, grpc-status parsing, grpc-timeout both ways, local-reply statuses by cause."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.local_reply import Cause
from proxy.resilience.grpc import (
    FAILURE_STATUSES,
    RETRY_CONDITION_STATUS,
    GrpcStatus,
    format_grpc_timeout,
    grpc_status_for,
    grpc_status_of,
    is_grpc,
    parse_grpc_timeout,
)


@pytest.mark.parametrize(("value", "expected"), [
    (b"application/grpc", True), (b"application/grpc+proto", True), (b"Application/GRPC+json", True),
    (b"application/grpc;charset=utf-8", True), (b"application/grpc-web", False), (b"application/json", False),
    (b"application/grpcx", False), (None, False), (b"", False),
])
def test_is_grpc(value: bytes | None, expected: bool) -> None:
    assert is_grpc(value) is expected


def test_grpc_status_parsing() -> None:
    assert grpc_status_of(b"14") is GrpcStatus.UNAVAILABLE and grpc_status_of(b"0") is GrpcStatus.OK
    for bad in (None, b"", b"17", b"-1", b"abc", b"1 4", b"014"):
        assert grpc_status_of(bad) is None, bad


@pytest.mark.parametrize(("value", "seconds"), [
    (b"100m", 0.1), (b"5S", 5.0), (b"1H", 3600.0), (b"2M", 120.0), (b"250u", 0.00025), (b"99999999n", 0.099999999),
])
def test_grpc_timeout_parsing(value: bytes, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


def test_malformed_grpc_timeouts_are_ignored() -> None:
    for bad in (None, b"", b"S", b"10", b"123456789S", b"1.5S", b"10s", b"-1S", b"1 S"):
        assert parse_grpc_timeout(bad) is None, bad


@given(st.floats(min_value=1e-9, max_value=1e7))
def test_formatted_timeouts_parse_back_within_the_unit(seconds: float) -> None:
    value = format_grpc_timeout(seconds)
    assert len(value) <= 9
    parsed = parse_grpc_timeout(value)
    assert parsed is not None and parsed <= seconds * (1 + 1e-9) + 1e-9
    # Truncated to the finest unit whose count fits 8 digits: never more than about 1e-5 of it lost.
    assert parsed >= seconds * (1 - 2e-5) - 1e-9


def test_an_expired_deadline_goes_out_as_one_millisecond() -> None:
    assert format_grpc_timeout(0.0) == b"1m" and format_grpc_timeout(-3.0) == b"1m"


def test_local_replies_map_to_the_issue_statuses() -> None:
    assert grpc_status_for(Cause.CONNECT_REFUSED) is GrpcStatus.UNAVAILABLE
    assert grpc_status_for(Cause.UNAVAILABLE) is GrpcStatus.UNAVAILABLE
    assert grpc_status_for(Cause.CLUSTER_LIMIT) is GrpcStatus.UNAVAILABLE
    assert grpc_status_for(Cause.TIMEOUT) is GrpcStatus.DEADLINE_EXCEEDED
    assert grpc_status_for(Cause.AUTHZ_DENIED) is GrpcStatus.PERMISSION_DENIED
    assert grpc_status_for(Cause.API_KEY) is GrpcStatus.UNAUTHENTICATED
    assert grpc_status_for(Cause.RATE_LIMITED) is GrpcStatus.RESOURCE_EXHAUSTED
    assert grpc_status_for(Cause.NO_ROUTE) is GrpcStatus.UNIMPLEMENTED
    assert grpc_status_for(Cause.INTERNAL) is GrpcStatus.INTERNAL


def test_failures_and_retry_names() -> None:
    assert GrpcStatus.UNAVAILABLE in FAILURE_STATUSES and GrpcStatus.NOT_FOUND not in FAILURE_STATUSES
    assert set(RETRY_CONDITION_STATUS) == {"cancelled", "deadline-exceeded", "internal", "resource-exhausted",
                                           "unavailable"}

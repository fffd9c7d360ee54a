"""Route `authz`: exact SPIFFE IDs, `*` as one whole path segment, deny wins, no identity is never allowed,
the trust domain must match; entries are checked when compiled; a refusal is a 403 reply."""

from __future__ import annotations

import pytest

from proxy.config.model import AuthzConfig
from proxy.filters.authz import AuthzCheck, IdentityRules, parse_identity_pattern
from proxy.local_reply import Cause
from proxy.message import RequestHead
from proxy.stream import RequestStream
from proxy.telemetry.record import RequestRecord

SA = "spiffe://cluster.local/ns/default/sa"


def check(allow: list[str], deny: list[str] | None = None) -> AuthzCheck:
    found = AuthzCheck.from_config(AuthzConfig(allow_identities=allow, deny_identities=deny or []), "api")
    assert found is not None
    return found


def test_exact_ids_match_only_themselves() -> None:
    authz = check([f"{SA}/web", "spiffe://cluster.local"])
    assert authz.allows(f"{SA}/web")
    assert authz.allows("spiffe://cluster.local")  # a trust domain's own ID (no path) is an ID too
    assert not authz.allows(f"{SA}/web2")
    assert not authz.allows(f"{SA}/we")
    assert not authz.allows(f"{SA}/web/")
    assert not authz.allows(f"{SA}/web/x")
    assert not authz.allows(f"{SA}/WEB")  # paths are case-sensitive


def test_a_wildcard_is_one_whole_segment() -> None:
    authz = check([f"{SA}/*"])
    assert authz.allows(f"{SA}/web")
    assert authz.allows(f"{SA}/legacy-batch")
    assert not authz.allows(f"{SA}/web/extra")  # never across a `/`
    assert not authz.allows(f"{SA}/")  # never an empty segment
    assert not authz.allows(SA)  # never no segment
    assert not authz.allows("spiffe://cluster.local/ns/default/xx/web")


def test_a_wildcard_can_sit_between_segments() -> None:
    authz = check(["spiffe://cluster.local/ns/*/sa/web"])
    assert authz.allows("spiffe://cluster.local/ns/default/sa/web")
    assert authz.allows("spiffe://cluster.local/ns/prod/sa/web")
    assert not authz.allows("spiffe://cluster.local/ns/a/b/sa/web")
    assert not authz.allows("spiffe://cluster.local/ns//sa/web")
    assert not authz.allows("spiffe://cluster.local/ns/prod/sa/api")


def test_the_trust_domain_must_match() -> None:
    authz = check([f"{SA}/*", f"{SA}/exact"])
    for foreign in ("spiffe://other.local/ns/default/sa/web", "spiffe://cluster.local.evil/ns/default/sa/web",
                    "spiffe://evil.cluster.local/ns/default/sa/exact", "spiffe://cluster.locaL/ns/default/sa/web"):
        assert not authz.allows(foreign), foreign


def test_only_spiffe_ids_match() -> None:
    authz = check([f"{SA}/*"])
    assert not authz.allows("https://cluster.local/ns/default/sa/web")
    assert not authz.allows("cluster.local/ns/default/sa/web")


def test_deny_wins_over_allow() -> None:
    authz = check([f"{SA}/*"], deny=[f"{SA}/legacy-batch", f"{SA}/old"])
    assert authz.allows(f"{SA}/web")
    assert not authz.allows(f"{SA}/legacy-batch")
    assert not authz.allows(f"{SA}/old")
    both = check([f"{SA}/web"], deny=[f"{SA}/web"])
    assert not both.allows(f"{SA}/web")


def test_deny_patterns_wildcard_too() -> None:
    authz = check(["spiffe://cluster.local/ns/*/sa/*"], deny=["spiffe://cluster.local/ns/test/sa/*"])
    assert authz.allows("spiffe://cluster.local/ns/prod/sa/web")
    assert not authz.allows("spiffe://cluster.local/ns/test/sa/web")


def test_no_identity_is_never_allowed() -> None:
    assert not check([f"{SA}/*"]).allows("")
    assert not check(["spiffe://cluster.local/*"]).allows("")
    assert not check([f"{SA}/web"], deny=[]).allows("")


def test_an_empty_allow_list_allows_nobody() -> None:
    assert not check([]).allows(f"{SA}/web")


def test_rules_are_compiled_into_a_set_and_segment_patterns() -> None:
    rules = IdentityRules([f"{SA}/web", f"{SA}/*", "spiffe://cluster.local/ns/*/sa/api"])
    assert rules.exact == frozenset({f"{SA}/web"})
    assert rules.patterns == {5: [("cluster.local", "ns", "default", "sa", "*"),
                                  ("cluster.local", "ns", "*", "sa", "api")]}


@pytest.mark.parametrize(("entry", "message"), [
    ("cluster.local/ns/default/sa/web", "is not a SPIFFE ID: it must start with spiffe://"),
    ("SPIFFE://cluster.local/sa/web", "it must start with spiffe://"),
    ("spiffe://*/ns/default", "the trust domain cannot be a wildcard"),
    ("spiffe:///ns/default", "bad trust domain ''"),
    ("spiffe://Cluster.Local/ns/default", "bad trust domain 'Cluster.Local'"),
    ("spiffe://cluster.local:8443/ns/default", "bad trust domain 'cluster.local:8443'"),
    ("spiffe://cluster.local/ns/default/sa/web-*", "bad path segment 'web-*' (`*` must be a whole segment)"),
    ("spiffe://cluster.local/ns/**", "bad path segment '**' (`*` must be a whole segment)"),
    ("spiffe://cluster.local/ns/default/", "empty path segment"),
    ("spiffe://cluster.local//default", "empty path segment"),
    ("spiffe://cluster.local/ns/../sa", "bad path segment '..'"),
    ("spiffe://cluster.local/ns/a b", "bad path segment 'a b'"),
    ("spiffe://cluster.local/ns/a?b=1", "bad path segment 'a?b=1'"),
    ("spiffe://cluster.local/" + "a" * 2100, "at most 2048 bytes"),
])
def test_bad_entries_are_refused_when_compiled(entry: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_identity_pattern(entry)
    assert message in str(caught.value)
    with pytest.raises(ValueError):
        check([entry])


def test_good_entries_parse_into_segments() -> None:
    assert parse_identity_pattern(f"{SA}/*") == ("cluster.local", "ns", "default", "sa", "*")
    assert parse_identity_pattern("spiffe://x/y") == ("x", "y")
    assert parse_identity_pattern("spiffe://td/a.b_c-D") == ("td", "a.b_c-D")


def stream(identity: str) -> RequestStream:
    head = RequestHead(method=b"GET", path="/", query=b"", authority="svc", host_header=b"svc", headers=[])
    request = RequestStream(head, None, b"10.0.0.1", 0.0)
    request.peer_identity = identity
    return request


def test_the_check_reads_the_streams_peer_identity_and_refuses_with_403() -> None:
    authz = check([f"{SA}/*"])
    record = RequestRecord("in", 0.0, None)
    assert authz.check(stream(f"{SA}/web"), record) is None
    reply = authz.check(stream(""), record)
    assert reply is not None and reply.cause is Cause.AUTHZ_DENIED and reply.head.status == 403
    assert (b"proxy-status", b'sidecar; error=http_request_denied; details="route api: peer identity not allowed"'
            ) in reply.head.headers
    assert authz.check(stream("spiffe://other/ns/default/sa/web"), record) is reply  # built once
    assert record.api_client == ""


def test_a_route_without_authz_has_no_check() -> None:
    assert AuthzCheck.from_config(None, "api") is None

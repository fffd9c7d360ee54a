"""Route `api_key`: the presented key is hashed and compared with every stored digest in constant time; a
missing, empty, repeated or unknown key is a 401; a known key's service name goes on the record."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from proxy.config.model import ApiKeyConfig
from proxy.filters.apikey import ApiKeyCheck, ApiKeys, ApiKeyStore
from proxy.local_reply import Cause
from proxy.message import Headers, RequestHead
from proxy.stream import RequestStream
from proxy.telemetry.record import RequestRecord


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


KEYS = ApiKeys([(digest("k-campaign"), "campaign-service"), (digest("k-billing"), "billing"),
                (digest("k-search"), "search")])


def test_lookup_names_the_service_of_a_known_key() -> None:
    assert KEYS.lookup(b"k-campaign") == "campaign-service"
    assert KEYS.lookup(b"k-search") == "search"
    assert KEYS.lookup(b"k-unknown") is None
    assert KEYS.lookup(b"") is None
    assert KEYS.lookup(digest("k-campaign")) is None  # the digest itself is not the key
    assert KEYS.lookup(digest("k-campaign").hex().encode()) is None
    assert len(KEYS) == 3 and len(ApiKeys([])) == 0 and ApiKeys([]).lookup(b"x") is None


@pytest.mark.parametrize("presented", [b"k-campaign", b"k-search", b"nope"])
def test_lookup_compares_against_every_digest_whatever_matches(monkeypatch: pytest.MonkeyPatch,
                                                               presented: bytes) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    KEYS.lookup(presented)
    # No early exit: a match on the first digest costs as many comparisons as no match at all, and every
    # comparison is of the presented key's digest with a stored one (equal lengths).
    assert [b for _, b in calls] == list(KEYS.digests)
    assert {a for a, _ in calls} == {hashlib.sha256(presented).digest()}


def request(headers: Headers) -> RequestStream:
    head = RequestHead(method=b"GET", path="/", query=b"", authority="svc", host_header=b"svc", headers=headers)
    return RequestStream(head, None, b"10.0.0.1", 0.0)


def api_key_check() -> ApiKeyCheck:
    config = ApiKeyConfig(header="X-Api-Key", keys_file="/keys.yaml")
    return ApiKeyCheck.from_config(config, ApiKeyStore("/keys.yaml", KEYS), "api")


def test_a_known_key_passes_and_names_the_client_on_the_record() -> None:
    record = RequestRecord("in", 0.0, None)
    assert api_key_check().check(request([(b"x-api-key", b"k-billing")]), record) is None
    assert record.api_client == "billing"


@pytest.mark.parametrize(("headers", "details"), [
    ([], "route api: api key missing (x-api-key)"),
    ([(b"x-api-key", b"")], "route api: api key missing (x-api-key)"),
    ([(b"authorization", b"k-billing")], "route api: api key missing (x-api-key)"),
    ([(b"x-api-key", b"k-nope")], "route api: api key unknown"),
    ([(b"x-api-key", b"K-BILLING")], "route api: api key unknown"),  # keys are case-sensitive
    ([(b"x-api-key", b"k-billing"), (b"x-api-key", b"k-billing")], "route api: api key sent more than once"),
    ([(b"x-api-key", b"k-nope"), (b"x-api-key", b"k-billing")], "route api: api key sent more than once"),
])
def test_a_missing_unknown_or_repeated_key_is_a_401(headers: Headers, details: str) -> None:
    record = RequestRecord("in", 0.0, None)
    reply = api_key_check().check(request(headers), record)
    assert reply is not None and reply.cause is Cause.API_KEY and reply.head.status == 401
    assert (b"proxy-status", f'sidecar; error=http_request_denied; details="{details}"'.encode()) in reply.head.headers
    assert (b"www-authenticate", b'ApiKey header="x-api-key"') in reply.head.headers
    assert b"k-" not in reply.body and b"k-" not in b"".join(v for _, v in reply.head.headers)
    assert record.api_client == ""


def test_new_keys_take_effect_from_the_next_request() -> None:
    store = ApiKeyStore("/keys.yaml", KEYS)
    authn = ApiKeyCheck(b"x-api-key", store, "api")
    record = RequestRecord("in", 0.0, None)
    assert authn.check(request([(b"x-api-key", b"k-new")]), record) is authn.unknown
    store.keys = ApiKeys([(digest("k-new"), "newcomer")])
    assert authn.check(request([(b"x-api-key", b"k-new")]), record) is None and record.api_client == "newcomer"
    assert authn.check(request([(b"x-api-key", b"k-billing")]), record) is authn.unknown

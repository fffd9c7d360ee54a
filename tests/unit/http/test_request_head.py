"""The request-head decision (proxy.http.request_head.accept_head), called directly: no parser, no socket.

Each test feeds what llhttp would have parsed (method, raw target, lower-cased headers, version, its
keep-alive and upgrade flags) and checks what the client and the upstream get: the head handed to the
request path, the framing the codec uses, or the local reply (status and details) the client sees.
"""

from __future__ import annotations

import pytest

from proxy.http.path import BASE, NONE
from proxy.http.request_head import AcceptedHead, BadRequest, accept_head
from proxy.http.settings import ServerSettings
from proxy.local_reply import Cause

DEFAULTS = ServerSettings()
HOST = (b"host", b"svc.local")


def accept(
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    method: bytes = b"GET",
    target: bytes = b"/",
    version: str = "1.1",
    keep_alive: bool = True,
    upgrade: bool = False,
    settings: ServerSettings = DEFAULTS,
) -> AcceptedHead:
    return accept_head(method, target, [HOST] if headers is None else headers, version, keep_alive, upgrade,
                       settings)


def refused(headers: list[tuple[bytes, bytes]] | None = None, **kwargs: object) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        accept(headers, **kwargs)  # type: ignore[arg-type]
    return caught.value


def assert_400(error: BadRequest, details: str) -> None:
    """What the client sees: 400, the reason in the body and Proxy-Status, and the connection closing."""
    reply = error.reply()
    assert error.cause is Cause.BAD_REQUEST
    assert reply.head.status == 400
    assert reply.close
    assert reply.body == f"400 http_request_error: malformed request: {details}\n".encode()


# -- a plain request ------------------------------------------------------------------------------------


def test_a_plain_request_becomes_the_head_the_request_path_sees() -> None:
    sent = [(b"host", b"Svc.Local:8080"), (b"user-agent", b"curl/8"), (b"accept", b"*/*")]
    accepted = accept(sent, target=b"/a/b?x=1&y=2")
    head = accepted.head
    assert head.method == b"GET"
    assert head.path == "/a/b"
    assert head.query == b"x=1&y=2"
    assert head.authority == "svc.local"  # what host matchers compare: lower-case, no port
    assert head.host_header == b"Svc.Local:8080"  # what goes upstream as Host, unchanged
    # Host is written upstream from host_header, not forwarded as a header; the rest keep their order.
    assert head.headers == [(b"user-agent", b"curl/8"), (b"accept", b"*/*")]
    assert sent == [(b"host", b"Svc.Local:8080"), (b"user-agent", b"curl/8"), (b"accept", b"*/*")]
    assert accepted.local is None
    assert accepted.keep_alive and accepted.http_minor == 1
    assert accepted.content_length is None and not accepted.chunked
    assert not accepted.expect_continue and not accepted.websocket


def test_the_fragment_never_reaches_the_head() -> None:
    head = accept(target=b"/x?q=1#frag?z").head
    assert (head.path, head.query) == ("/x", b"q=1")


def test_http_1_0_without_host_is_accepted_and_keeps_its_version_and_keep_alive() -> None:
    accepted = accept([], version="1.0", keep_alive=False)
    assert accepted.http_minor == 0
    assert not accepted.keep_alive  # llhttp's verdict (no `connection: keep-alive`) is kept
    assert accepted.head.authority == "" and accepted.head.host_header == b""


def test_a_client_asking_to_close_is_not_kept_alive() -> None:
    assert not accept([HOST, (b"connection", b"close")], keep_alive=False).keep_alive


# -- request-target forms ---------------------------------------------------------------------------------


def test_absolute_form_authority_replaces_host() -> None:
    accepted = accept([(b"host", b"other.local")], target=b"http://Example.COM:8080/p?q=1")
    head = accepted.head
    assert head.authority == "example.com"
    assert head.host_header == b"Example.COM:8080"
    assert (head.path, head.query) == ("/p", b"q=1")
    assert head.headers == []


def test_absolute_form_needs_no_host_header_and_gets_a_root_path() -> None:
    head = accept([], target=b"https://api.example.com?x=1").head
    assert head.host_header == b"api.example.com"
    assert (head.path, head.query) == ("/", b"x=1")


def test_absolute_form_with_an_invalid_host_header_is_refused() -> None:
    assert_400(refused([(b"host", b"bad host")], target=b"http://example.com/"), "invalid Host header")


def test_absolute_form_with_userinfo_is_not_accepted_as_a_target() -> None:
    assert_400(refused(target=b"http://user@example.com/"), "bad request target")


def test_options_asterisk_is_accepted_and_other_methods_are_not() -> None:
    head = accept(method=b"OPTIONS", target=b"*").head
    assert head.method == b"OPTIONS" and head.path == "*"
    assert_400(refused(method=b"GET", target=b"*"), "bad request target")
    assert_400(refused(target=b"example.com/x"), "bad request target")


def test_connect_is_answered_405_and_the_connection_closes() -> None:
    # No Host is needed: CONNECT is refused whatever it carries, and never handed over.
    accepted = accept([], method=b"CONNECT", target=b"example.com:443", upgrade=True)
    local = accepted.local
    assert local is not None
    assert local.cause is Cause.METHOD_NOT_ALLOWED
    assert local.head.status == 405
    assert local.close and (b"connection", b"close") in local.head.headers
    assert not accepted.keep_alive
    assert not accepted.websocket  # llhttp flags CONNECT as an upgrade: nothing is tunnelled
    assert accepted.head.method == b"CONNECT" and accepted.head.path == "/"


# -- Host -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [[], [HOST, HOST], [(b"host", b"a"), (b"host", b"b")]])
def test_http_1_1_needs_exactly_one_host(headers: list[tuple[bytes, bytes]]) -> None:
    assert_400(refused(headers), "missing or repeated Host header")


@pytest.mark.parametrize("value", [b"bad host", b"a/b", b":80", b"a:99999", b"user@a", b"[::1"])
def test_an_invalid_host_is_refused(value: bytes) -> None:
    assert_400(refused([(b"host", value)]), "invalid Host header or authority")


def test_a_bracketed_ipv6_host_is_accepted() -> None:
    head = accept([(b"host", b"[::1]:8080")]).head
    assert head.authority == "::1" and head.host_header == b"[::1]:8080"


# -- version ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.0", "0.9", "1.2"])
def test_a_version_other_than_1_0_or_1_1_is_answered_505(version: str) -> None:
    error = refused(version=version)
    assert error.cause is Cause.HTTP_VERSION
    reply = error.reply()
    assert reply.head.status == 505
    assert reply.close
    assert b"only HTTP/1.0 and HTTP/1.1 are supported" in reply.body


# -- framing ------------------------------------------------------------------------------------------------


def test_content_length_is_the_framing_and_is_not_forwarded() -> None:
    accepted = accept([HOST, (b"content-length", b"12")], method=b"POST")
    assert accepted.content_length == 12 and not accepted.chunked
    assert accepted.head.headers == []  # the upstream request is framed anew


def test_chunked_is_the_framing_and_is_not_forwarded() -> None:
    accepted = accept([HOST, (b"transfer-encoding", b" Chunked ")], method=b"POST")
    assert accepted.chunked and accepted.content_length is None
    assert accepted.head.headers == []


@pytest.mark.parametrize("codings", [
    [b"gzip"],
    [b"gzip, chunked"],
    [b"chunked", b"chunked"],
    [b"identity"],
])
def test_a_transfer_encoding_other_than_chunked_once_is_refused(codings: list[bytes]) -> None:
    headers = [HOST, *((b"transfer-encoding", value) for value in codings)]
    assert_400(refused(headers, method=b"POST"), "unsupported Transfer-Encoding")


def test_a_declared_length_over_the_limit_is_answered_413_before_the_body() -> None:
    limited = ServerSettings(max_request_body=64)
    accepted = accept([HOST, (b"content-length", b"65")], method=b"POST", settings=limited)
    local = accepted.local
    assert local is not None
    assert local.cause is Cause.BODY_TOO_LARGE and local.head.status == 413
    assert local.close and not accepted.keep_alive


def test_a_length_at_the_limit_or_without_a_limit_is_accepted() -> None:
    at_limit = accept([HOST, (b"content-length", b"64")], settings=ServerSettings(max_request_body=64))
    assert at_limit.local is None and at_limit.keep_alive
    unlimited = accept([HOST, (b"content-length", b"1000000000")])
    assert unlimited.local is None


def test_a_chunked_body_is_not_refused_by_its_head() -> None:
    # Its length is unknown until it arrives: the codec counts it as it streams.
    accepted = accept([HOST, (b"transfer-encoding", b"chunked")], settings=ServerSettings(max_request_body=1))
    assert accepted.local is None


# -- Expect and WebSocket -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("framing", "expected"), [
    ((b"content-length", b"10"), True),
    ((b"transfer-encoding", b"chunked"), True),
    ((b"content-length", b"0"), False),  # nothing to wait for
    (None, False),
])
def test_100_continue_is_owed_only_when_a_body_follows(framing: tuple[bytes, bytes] | None, expected: bool) -> None:
    headers = [HOST, (b"expect", b"100-Continue")]
    if framing is not None:
        headers.append(framing)
    accepted = accept(headers, method=b"POST")
    assert accepted.expect_continue is expected
    assert accepted.head.headers == []  # Expect is answered here, never forwarded


def test_an_unknown_expectation_owes_no_100_continue() -> None:
    assert not accept([HOST, (b"expect", b"something"), (b"content-length", b"3")]).expect_continue


def test_a_websocket_handshake_is_flagged_when_llhttp_sees_an_upgrade() -> None:
    headers = [HOST, (b"connection", b"Upgrade"), (b"upgrade", b"WebSocket"),
               (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    accepted = accept(headers, upgrade=True)
    assert accepted.websocket and accepted.keep_alive
    # Upgrade and Connection are hop-by-hop: the request path adds them back for a handshake it forwards.
    assert accepted.head.headers == [(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]


def test_no_websocket_without_llhttp_upgrade_or_for_another_protocol() -> None:
    assert not accept([HOST, (b"upgrade", b"websocket")], upgrade=False).websocket
    h2c = accept([HOST, (b"connection", b"upgrade"), (b"upgrade", b"h2c")], upgrade=True)
    assert not h2c.websocket and h2c.head.headers == []


def test_a_websocket_handshake_refused_413_is_not_an_upgrade() -> None:
    headers = [HOST, (b"upgrade", b"websocket"), (b"content-length", b"10")]
    accepted = accept(headers, upgrade=True, settings=ServerSettings(max_request_body=5))
    assert accepted.local is not None and not accepted.websocket


# -- headers that stop here --------------------------------------------------------------------------------------


def test_hop_by_hop_headers_and_the_ones_connection_names_are_not_forwarded() -> None:
    headers = [
        HOST,
        (b"connection", b"keep-alive, X-Secret"),
        (b"connection", b"x-other"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"1"),
        (b"x-other", b"2"),
        (b"te", b"gzip"),
        (b"upgrade", b"h2c"),
        (b"x-end-to-end", b"kept"),
        (b"accept", b"*/*"),
    ]
    assert accept(headers).head.headers == [(b"x-end-to-end", b"kept"), (b"accept", b"*/*")]


def test_proxy_headers_are_not_forwarded() -> None:
    headers = [HOST, (b"proxy-authorization", b"Basic eA=="), (b"proxy-connection", b"keep-alive"),
               (b"proxy-custom", b"x"), (b"x-proxy-kept", b"y")]
    assert accept(headers).head.headers == [(b"x-proxy-kept", b"y")]


def test_te_trailers_goes_on_even_when_connection_names_te() -> None:
    headers = [HOST, (b"te", b" Trailers "), (b"connection", b"te"), (b"accept", b"*/*")]
    # Appended once, last, in its canonical form.
    assert accept(headers).head.headers == [(b"accept", b"*/*"), (b"te", b"trailers")]


def test_a_te_other_than_trailers_is_dropped() -> None:
    assert accept([HOST, (b"te", b"trailers, deflate")]).head.headers == []


def test_request_ids_are_left_to_the_codec() -> None:
    # Kept as sent (the codec dedupes or adds one after this decision); Connection can still name it.
    sent = [HOST, (b"x-request-id", b"a"), (b"x-request-id", b"")]
    assert accept(sent).head.headers == [(b"x-request-id", b"a"), (b"x-request-id", b"")]
    assert accept([HOST, (b"connection", b"x-request-id"), (b"x-request-id", b"a")]).head.headers == []


# -- path normalization -------------------------------------------------------------------------------------------


def test_the_path_is_normalized_as_the_listener_says() -> None:
    assert accept(target=b"/a/./b/../c?x=/../").head.path == "/a/c"
    raw = accept(target=b"/a/./b/../c", settings=ServerSettings(path_normalization=NONE)).head.path
    assert raw == "/a/./b/../c"


@pytest.mark.parametrize(("target", "details"), [
    (b"/a/../../etc/passwd", "path climbs above the root"),
    (b"/%2e%2e/x", "path climbs above the root"),
    (b"/a%00b", "path encodes NUL (%00)"),
])
def test_a_path_normalization_cannot_accept_is_refused(target: bytes, details: str) -> None:
    assert_400(refused(target=target, settings=ServerSettings(path_normalization=BASE)), details)

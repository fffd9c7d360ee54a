"""From a parsed HTTP/1.x request head to a `RequestHead` or the sidecar's own answer: a pure function.

Owns what the downstream codec decides from a request head alone, once llhttp has parsed it: the HTTP
versions this listener speaks (1.0 and 1.1), the request-target forms (origin-form, absolute-form whose
authority replaces Host, `OPTIONS *`, CONNECT refused with 405), the Host rules (exactly one, and valid;
none is allowed in HTTP/1.0), the body framing (Content-Length, or `chunked` alone and once), the Expect
and WebSocket flags, which headers stop here (hop-by-hop, the ones Connection names, Proxy-*, Host,
Content-Length, Expect; `te: trailers` goes on), path normalization, and a body refused by its declared
length (413). A head that cannot be accepted raises `BadRequest`.

Must not do I/O, hold state, or know the parser object, the transport, request ids, routes or policy:
its inputs are plain values, so it is tested without a socket (tests/unit/http/test_request_head.py).
"""

from __future__ import annotations

from proxy.http.authority import route_authority
from proxy.http.headers import TE, connection_tokens, forwarded_te
from proxy.http.path import normalize_path, refusal, without_fragment
from proxy.http.settings import ServerSettings
from proxy.local_reply import Cause, LocalReply, local_reply
from proxy.message import HOP_BY_HOP, Headers, RequestHead

# Headers the upstream request gets anew from the sidecar (its own framing; Expect is answered here).
# `te: trailers` is the one TE that goes on (see accept_head).
_DROPPED = HOP_BY_HOP | {b"content-length", b"expect", b"host"}


class BadRequest(Exception):
    """The head cannot be accepted: the codec answers `cause`, then closes the connection.

    `cause` is Cause.BAD_REQUEST (400, `reason` goes into the reply's details) or Cause.HTTP_VERSION (505,
    a request line that is not HTTP/1.0 or HTTP/1.1). Nothing of the request reaches the upstream.
    """

    def __init__(self, reason: str, cause: Cause = Cause.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause

    def reply(self) -> LocalReply:
        """The answer the client gets (its details name the reason of a 400)."""
        if self.cause is Cause.BAD_REQUEST:
            return local_reply(Cause.BAD_REQUEST, f"malformed request: {self.reason}")
        return local_reply(self.cause)


class AcceptedHead:
    """What the codec needs from one HTTP/1 request head.

    `head` is the protocol-independent head handed up; the rest are HTTP/1 facts the codec keeps: the
    declared body framing (`content_length` None when absent, `chunked`), whether to send `100 Continue`
    on demand (`expect_continue`: asked for, and there is a body), whether the request opens a WebSocket
    (`websocket`), `http_minor` (0 or 1), and `keep_alive` (False when the client asked to close, or when
    `local` is set). `local` is the reply the codec sends instead of handing the request over (405 for
    CONNECT, 413 for a declared length over the limit); the connection closes after it.
    """

    __slots__ = ("chunked", "content_length", "expect_continue", "head", "http_minor", "keep_alive", "local",
                 "websocket")

    head: RequestHead  # set by accept_head once the head is built

    def __init__(self, http_minor: int, keep_alive: bool) -> None:
        self.http_minor = http_minor
        self.keep_alive = keep_alive
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.websocket = False
        self.local: LocalReply | None = None


def accept_head(method: bytes, target: bytes, headers: Headers, version: str, keep_alive: bool,
                upgrade: bool, settings: ServerSettings) -> AcceptedHead:
    """Decide about one parsed request head; raises BadRequest when it is refused.

    `method`, `target` (the raw request target) and `headers` (lower-cased names, in order) are what llhttp
    parsed; `version` is its "1.1"-style version; `keep_alive` and `upgrade` are llhttp's should_keep_alive
    and should_upgrade. Of the listener's `settings`, `path_normalization` and `max_request_body` apply.
    `headers` is not modified: the head gets a new list.
    """
    accepted = AcceptedHead(_http_minor(version), keep_alive)
    host, hosts, forwarded = _read_headers(headers, accepted)
    target = without_fragment(target)
    if target[:1] != b"/":
        target, host, hosts = _other_form(method, target, host, hosts, accepted)
    connect = accepted.local is not None  # refused (405) whatever its Host says
    if not connect and (hosts > 1 or (hosts == 0 and accepted.http_minor == 1)):
        raise BadRequest("missing or repeated Host header")
    host_header = host if host is not None else b""
    authority = route_authority(host_header)
    if authority is None:
        if not connect:
            raise BadRequest("invalid Host header or authority")
        authority = ""  # CONNECT's target is its authority; it is refused (405) anyway
    path, _, query = target.partition(b"?")
    # Routes match, and the upstream gets, the normalized path (proxy.http.path).
    normalized = normalize_path(path, settings.path_normalization)
    if normalized is None:
        raise BadRequest(refusal(path))
    accepted.head = RequestHead(method=method, path=normalized.decode("latin-1"), query=query,
                                authority=authority, host_header=host_header, headers=forwarded)
    if accepted.local is None:
        limit = settings.max_request_body
        length = accepted.content_length
        if limit and length is not None and length > limit:
            accepted.local = local_reply(Cause.BODY_TOO_LARGE, close=True)
    if accepted.local is None:
        accepted.websocket = accepted.websocket and upgrade
    else:
        # Answered here, then the connection closes: no keep-alive, and no WebSocket handshake either.
        accepted.websocket = False
        accepted.keep_alive = False
    return accepted


def _http_minor(version: str) -> int:
    if version == "1.1":
        return 1
    if version == "1.0":
        return 0
    # llhttp accepts e.g. HTTP/2.0 in a request line; this listener speaks 1.x.
    raise BadRequest(f"unsupported version HTTP/{version}", Cause.HTTP_VERSION)


def _read_headers(headers: Headers, accepted: AcceptedHead) -> tuple[bytes | None, int, Headers]:
    """Read the framing and flags into `accepted`; (last Host value, Host count, the headers that go on)."""
    content_length: int | None = None
    chunked = False
    host: bytes | None = None
    hosts = 0
    expect = False
    websocket = False
    connection = False
    proxy_named = False
    te_trailers = False
    for name, value in headers:
        if name == b"host":
            host = value
            hosts += 1
        elif name == b"content-length":
            content_length = int(value)  # llhttp has already refused a malformed or duplicate one
        elif name == b"transfer-encoding":
            # Only `chunked`, once: llhttp refuses other codings only after its headers-complete callback
            # (the request would already be handed over), and a proxy cannot frame a body it does not
            # understand.
            if chunked or value.strip().lower() != b"chunked":
                raise BadRequest("unsupported Transfer-Encoding")
            chunked = True
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
        elif name == b"upgrade":
            websocket = value.strip().lower() == b"websocket"
        elif name == b"connection":
            connection = True
        elif name[:6] == b"proxy-":
            proxy_named = True
        elif name == TE:
            te_trailers = te_trailers or forwarded_te(value)
    accepted.content_length = content_length
    accepted.chunked = chunked
    accepted.expect_continue = expect and (chunked or (content_length is not None and content_length > 0))
    accepted.websocket = websocket  # asked for; llhttp's upgrade flag and the verdict decide
    return host, hosts, _forwarded(headers, connection, proxy_named, te_trailers)


def _forwarded(headers: Headers, connection: bool, proxy_named: bool, te_trailers: bool) -> Headers:
    """The headers that go on. Host, framing, Expect and hop-by-hop headers stop here: the upstream request
    is framed anew (Host is written from `host_header`, which absolute-form and rewrite.host may change)."""
    kept = [(n, v) for n, v in headers if n not in _DROPPED]
    if connection:
        named = connection_tokens(headers)
        if named:
            kept = [(n, v) for n, v in kept if n not in named]
    if proxy_named:
        kept = [(n, v) for n, v in kept if n[:6] != b"proxy-"]
    if te_trailers:
        # The client accepts trailers: the upstream may send them (they are forwarded). The one TE
        # value that is not hop-by-hop, even when Connection names TE as RFC 9110 asks.
        kept.append((TE, b"trailers"))
    return kept


def _other_form(method: bytes, target: bytes, host: bytes | None, hosts: int,
                accepted: AcceptedHead) -> tuple[bytes, bytes | None, int]:
    """A target that is not origin-form -> (target, Host, Host count); a CONNECT is refused in `accepted`."""
    absolute = _split_absolute(target)
    if absolute is not None:
        # Absolute-form (the app uses us as its HTTP proxy): the authority replaces Host. A Host sent
        # too must still be a valid one, and only one (RFC 9112 section 3.2).
        if host is not None and route_authority(host) is None:
            raise BadRequest("invalid Host header")
        return absolute[1], absolute[0], max(hosts, 1)
    if method == b"CONNECT":
        accepted.local = local_reply(Cause.METHOD_NOT_ALLOWED, close=True)
        return b"/", host, hosts
    if not (method == b"OPTIONS" and target == b"*"):
        raise BadRequest("bad request target")
    return target, host, hosts


def _split_absolute(target: bytes) -> tuple[bytes, bytes] | None:
    """`http://host:port/path?q` -> (b"host:port", b"/path?q"); None when not absolute-form."""
    lowered = target[:8].lower()
    if lowered.startswith(b"http://"):
        rest = target[7:]
    elif lowered.startswith(b"https://"):
        rest = target[8:]
    else:
        return None
    slash = rest.find(b"/")
    query = rest.find(b"?")
    cut = min(i for i in (slash, query, len(rest)) if i >= 0)
    authority, path = rest[:cut], rest[cut:]
    if b"@" in authority or not authority:
        return None
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path

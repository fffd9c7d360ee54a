"""Route rewrite: prefix replacement per path-matcher kind, and Host/authority replacement."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.model import RewriteConfig, RouteMatchConfig
from proxy.filters.rewrite import Rewriter
from proxy.message import RequestHead
from tests.unit.heads import make_head


def rewritten(match: dict[str, Any], rewrite: dict[str, Any], head: RequestHead) -> RequestHead:
    compiled = Rewriter.from_config(RewriteConfig.model_validate(rewrite), RouteMatchConfig.model_validate(match))
    assert compiled is not None
    compiled.apply(head)
    return head


def test_nothing_to_rewrite_compiles_to_none() -> None:
    assert Rewriter.from_config(None, RouteMatchConfig()) is None
    assert Rewriter.from_config(RewriteConfig(), RouteMatchConfig(prefix="/a")) is None


@pytest.mark.parametrize(
    ("match", "prefix", "path", "expected"),
    [
        ({"prefix": "/api/v1"}, "/v2", "/api/v1/campaigns", "/v2/campaigns"),
        ({"prefix": "/api/v1"}, "/v2", "/api/v1", "/v2"),
        ({"prefix": "/api/"}, "/", "/api/x", "/x"),
        ({"prefix": "/api"}, "", "/api", "/"),  # an empty path becomes "/"
        ({"prefix": "/api"}, "", "/api/x", "/x"),
        ({"exact": "/old"}, "/new", "/old", "/new"),  # exact: the whole path
        ({"regex": "/api/v[0-9]+/.*"}, "/v2", "/api/v1/x", "/v2"),  # regex: the whole path
        ({}, "/app", "/x", "/appx"),  # no path matcher behaves as prefix "/" (Istio's compilation)
        ({}, "/app/", "/x", "/app/x"),
        ({"host": "svc"}, "/app/", "*", "*"),  # asterisk-form is left alone
    ],
)
def test_prefix(match: dict[str, Any], prefix: str, path: str, expected: str) -> None:
    head = rewritten(match, {"prefix": prefix}, make_head(path, query=b"q=1"))
    assert head.path == expected
    assert head.query == b"q=1"  # the query is never touched


@pytest.mark.parametrize(
    ("host", "header", "authority"),
    [
        ("campaign-v2.default.svc", b"campaign-v2.default.svc", "campaign-v2.default.svc"),
        ("Svc.Example:8080", b"Svc.Example:8080", "svc.example"),
        ("[::1]:8080", b"[::1]:8080", "::1"),  # as the codec fills authority: no brackets
        ("[::1]", b"[::1]", "::1"),
    ],
)
def test_host(host: str, header: bytes, authority: str) -> None:
    head = rewritten({"prefix": "/"}, {"host": host}, make_head("/a", authority="orig"))
    assert head.host_header == header
    assert head.authority == authority
    assert head.path == "/a"


def test_prefix_and_host_together() -> None:
    head = rewritten({"prefix": "/a"}, {"prefix": "/b", "host": "up"}, make_head("/a/x", authority="svc"))
    assert (head.path, head.host_header, head.authority) == ("/b/x", b"up", "up")


@pytest.mark.parametrize("host", ["", "a b", "a/b", "a\r\nb", "caf\u00e9"])
def test_bad_host_refused(host: str) -> None:
    with pytest.raises(ValueError, match=r"rewrite\.host"):
        Rewriter.from_config(RewriteConfig(host=host), RouteMatchConfig())


def test_non_ascii_prefix_refused() -> None:
    with pytest.raises(ValueError, match=r"rewrite\.prefix"):
        Rewriter.from_config(RewriteConfig(prefix="/caf\u00e9"), RouteMatchConfig())

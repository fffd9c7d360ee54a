"""A request-head factory for unit tests of the stages that read heads (matchers, tables, rewrites)."""

from __future__ import annotations

from proxy.message import RequestHead


def make_head(
    path: str = "/x",
    *,
    method: bytes = b"GET",
    query: bytes = b"",
    authority: str = "h",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> RequestHead:
    return RequestHead(
        method=method,
        path=path,
        query=query,
        authority=authority,
        host_header=authority.encode(),
        headers=headers or [],
    )

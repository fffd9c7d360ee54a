"""Route header rules (Istio's VirtualService `headers`): remove, then set, then add, on a header list.

Owns the compiled form of one `HeaderOpsConfig` (request or response side) and the order the contract fixes:
`remove` drops every value of a name; `set` replaces every value of a name with one (appending it when
absent); `add` appends a value, keeping any already there. Names are lower-cased bytes, values encoded,
once at compile.

Refused at compile (ValueError, so config validation can report it with the route's path):
- `host`: changing where a request goes is `rewrite.host`'s job, which also keeps `authority` in step;
- framing and hop-by-hop headers (`content-length`, `transfer-encoding`, `connection`, `keep-alive`,
  `te`, `trailer`, `upgrade`, `proxy-*`): the codec owns framing and strips hop-by-hop headers, so a rule
  on them would either corrupt a message or silently do nothing;
- names that are not HTTP tokens (this also refuses HTTP/2 pseudo-headers such as `:path`), and values
  with CR, LF or NUL (header injection) or characters outside latin-1.

Must not: decode values, allocate when a rule set has nothing to remove that is present, or know about
routes (the owner compiles one `HeaderRewriter` per route side and calls `apply`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from proxy.config.model import HeaderOpsConfig
from proxy.message import HOP_BY_HOP

# RFC 9110 5.6.2 token characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_VALUE = re.compile(r"[\r\n\x00]")
# Names a rule may not touch: the hop-by-hop set the codecs strip (one home: proxy.message), plus the
# framing and routing headers it writes itself.
_RESERVED = frozenset(name.decode() for name in HOP_BY_HOP | {b"host", b"content-length", b"trailer"})


class HeaderRewriter:
    """One compiled `HeaderOpsConfig`; `apply(headers)` edits a header list in place."""

    __slots__ = ("_append", "_drop")

    def __init__(self, remove: Iterable[bytes], set_: Iterable[tuple[bytes, bytes]],
                 add: Iterable[tuple[bytes, bytes]]) -> None:
        set_pairs = tuple(set_)
        # `set` is "remove every value, then append one": so set names join the drop set, and the set
        # values go before the adds, which is the contract's remove -> set -> add order in one pass.
        self._drop = frozenset(remove) | frozenset(name for name, _ in set_pairs)
        self._append = set_pairs + tuple(add)

    @classmethod
    def from_config(cls, ops: HeaderOpsConfig | None) -> HeaderRewriter | None:
        """None when there are no rules, so a route without rules pays nothing (not even a call)."""
        if ops is None or not (ops.remove or ops.set or ops.add):
            return None
        return cls(
            (_name(name, "remove") for name in ops.remove),
            ((_name(name, "set"), _value(name, value, "set")) for name, value in ops.set.items()),
            ((_name(name, "add"), _value(name, value, "add")) for name, value in ops.add.items()),
        )

    def apply(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Remove, set, add, in place. A set name's new value lands at the end of the list: order between
        different names carries no meaning (RFC 9110 5.3), so it is not worth a positional replace."""
        drop = self._drop
        if drop:
            # Scan first and rebuild only when something is actually dropped: the common case (rules that
            # set headers the client did not send) then costs no new list.
            for name, _ in headers:
                if name in drop:
                    headers[:] = [pair for pair in headers if pair[0] not in drop]
                    break
        headers.extend(self._append)

    def __repr__(self) -> str:
        return f"HeaderRewriter(drop={sorted(self._drop)!r}, append={list(self._append)!r})"


def _name(name: str, op: str) -> bytes:
    lower = name.lower()
    if not _TOKEN.fullmatch(lower):
        raise ValueError(f"header rules: {op}: {name!r} is not a valid header name")
    if lower == "host":
        raise ValueError(f"header rules: {op}: cannot change 'host'; use rewrite.host")
    if lower in _RESERVED or lower.startswith("proxy-"):
        raise ValueError(f"header rules: {op}: cannot change {lower!r}: "
                         "framing and hop-by-hop headers belong to the proxy")
    return lower.encode("ascii")


def _value(name: str, value: str, op: str) -> bytes:
    if _FORBIDDEN_VALUE.search(value):
        raise ValueError(f"header rules: {op}: value of {name!r} must not contain CR, LF or NUL")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"header rules: {op}: value of {name!r} must be latin-1 (ASCII recommended)") from None

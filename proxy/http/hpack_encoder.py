"""HPACK encoding for both HTTP/2 codecs: header fields -> a header block (RFC 7541), without a dynamic table.

Owns `encode_fields`. Every field is encoded on its own: an exact match in the static table is one byte, a
name in the static table is its index and the value as a literal, anything else two literals. Nothing is
ever added to the peer's dynamic table, so the encoding of a field never depends on what came before it: it
is cached (a bounded dict), and most fields of a request or response (`:method: POST`, `content-type:
application/grpc`, `te: trailers`, `:status: 200`) cost one dict lookup. What this gives up is the dynamic
table's compression of repeated custom fields: a few dozen bytes per block, on a loopback or pod-local hop.
Literals are never Huffman-coded (the CPU is worth more than the bytes here). Credentials (`authorization`,
`proxy-authorization`, `cookie`) are "never indexed" literals, so no intermediary may put them in a table.

Decoding is `proxy.http.hpack_decoder` (a peer's blocks may use its dynamic table). Must not do I/O or know
streams. Compiled with mypyc.
"""

from __future__ import annotations

from hpack.table import HeaderTable

from proxy.message import Headers

# A cached encoding per (name, value); cleared whole when it fills (values like request ids never repeat).
CACHE_LIMIT = 4096
# Values longer than this are encoded each time, not cached.
CACHE_VALUE_LIMIT = 128

_NEVER_INDEXED = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})


def _static_tables() -> tuple[dict[tuple[bytes, bytes], int], dict[bytes, int]]:
    exact: dict[tuple[bytes, bytes], int] = {}
    names: dict[bytes, int] = {}
    for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
        exact.setdefault((name, value), index)
        names.setdefault(name, index)
    return exact, names


_EXACT, _NAMES = _static_tables()
_cache: dict[tuple[bytes, bytes], bytes] = {}


def encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) with `first`'s high bits above the `prefix_bits`-bit prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(data: bytes) -> bytes:
    return encode_integer(len(data), 7, 0) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field's representation: indexed, or a literal "without indexing" ("never indexed" for credentials)."""
    name = name.lower()
    index = _EXACT.get((name, value), 0)
    if index:
        return bytes((0x80 | index,))
    first = 0x10 if name in _NEVER_INDEXED else 0x00
    index = _NAMES.get(name, 0)
    if index:
        return encode_integer(index, 4, first) + _literal(value)
    return bytes((first,)) + _literal(name) + _literal(value)


def encode_fields(fields: Headers) -> bytes:
    """The header block of `fields` (names are lowercased: HTTP/2 allows nothing else)."""
    cache = _cache
    parts: list[bytes] = []
    for field in fields:
        encoded = cache.get(field)
        if encoded is None:
            name, value = field
            encoded = encode_field(name, value)
            if len(value) <= CACHE_VALUE_LIMIT:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[field] = encoded
        parts.append(encoded)
    return b"".join(parts)

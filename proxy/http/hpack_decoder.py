"""HPACK decoding for both HTTP/2 codecs: a peer's header block -> its fields (RFC 7541), dynamic table included.

Owns `HeaderDecoder`, one per connection: the peer's encoder may add fields to the dynamic table and refer
to them by index in later blocks, so the table lives as long as the connection. It decodes the four field
representations (indexed; literal with incremental indexing; without indexing; never indexed), dynamic
table size updates (only at the start of a block, never above the size we allow: 4096, the default we do
not change), integers (bounded: at most 4 continuation bytes) and Huffman-coded strings (RFC 7541 appendix
B, with hpack's nibble state table). Every error is an `HpackError` (a COMPRESSION_ERROR to the engine);
a field list whose size (name + value + 32 per field, as SETTINGS_MAX_HEADER_LIST_SIZE counts it) passes
the limit is an `HpackError` with `oversized` set, raised as soon as it is passed.

Why not `hpack.Decoder`: it was a fifth of the sidecar's CPU per gRPC call once the engine was ours
(decision 0026); this is the same algorithm, compiled with mypyc. Must not do I/O or know streams.
"""

from __future__ import annotations

from hpack.huffman_table import HUFFMAN_TABLE
from hpack.table import HeaderTable

from proxy.message import Headers

# The dynamic table size we allow (SETTINGS_HEADER_TABLE_SIZE: never advertised, so the default).
MAX_TABLE_SIZE = 4096
# What each table entry costs beyond its name and value (RFC 7541 section 4.1).
ENTRY_OVERHEAD = 32

_STATIC: list[tuple[bytes, bytes]] = [(bytes(name), bytes(value)) for name, value in HeaderTable.STATIC_TABLE]
_STATIC_COUNT = len(_STATIC)

# hpack's Huffman decoding table, one row per (state, nibble): the next state, flags, the symbol.
_HUFFMAN_NEXT: list[int] = [row[0] for row in HUFFMAN_TABLE]
_HUFFMAN_FLAGS: list[int] = [row[1] for row in HUFFMAN_TABLE]
_HUFFMAN_SYMBOL: list[int] = [row[2] for row in HUFFMAN_TABLE]
_HUFFMAN_COMPLETE = 1
_HUFFMAN_EMIT = 2
_HUFFMAN_FAIL = 4


class HpackError(Exception):
    """A header block that cannot be decoded (`oversized`: its fields passed the header list limit)."""

    def __init__(self, message: str, oversized: bool = False) -> None:
        super().__init__(message)
        self.oversized = oversized


def decode_huffman(data: bytes) -> bytes:
    state = 0
    flags = _HUFFMAN_COMPLETE
    out = bytearray()
    for byte in data:
        index = state * 16 + (byte >> 4)
        flags = _HUFFMAN_FLAGS[index]
        if flags & _HUFFMAN_FAIL:
            raise HpackError("invalid Huffman string")
        if flags & _HUFFMAN_EMIT:
            out.append(_HUFFMAN_SYMBOL[index])
        state = _HUFFMAN_NEXT[index]
        index = state * 16 + (byte & 0x0F)
        flags = _HUFFMAN_FLAGS[index]
        if flags & _HUFFMAN_FAIL:
            raise HpackError("invalid Huffman string")
        if flags & _HUFFMAN_EMIT:
            out.append(_HUFFMAN_SYMBOL[index])
        state = _HUFFMAN_NEXT[index]
    if not flags & _HUFFMAN_COMPLETE:
        raise HpackError("incomplete Huffman string")
    return bytes(out)


def decode_integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """The integer at `pos` with a `prefix_bits`-bit prefix: (value, the position after it)."""
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    end = len(block)
    while True:
        if pos >= end:
            raise HpackError("an integer cut short")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("an integer over 2^35")


class HeaderDecoder:
    """One connection's HPACK decoding state (the peer's dynamic table as we mirror it)."""

    def __init__(self, max_header_list_size: int) -> None:
        self.max_header_list_size = max_header_list_size
        # Newest last: dynamic index 62 is the last entry.
        self._table: list[tuple[bytes, bytes]] = []
        self._table_bytes = 0
        self.table_size = MAX_TABLE_SIZE

    def decode(self, block: bytes) -> Headers:
        fields: Headers = []
        pos = 0
        end = len(block)
        total = 0
        limit = self.max_header_list_size
        while pos < end:
            first = block[pos]
            if first & 0x80:
                index, pos = decode_integer(block, pos, 7)
                field = self._field(index)
            elif first & 0x40:
                field, pos = self._literal(block, pos, 6)
                self._add(field)
            elif first & 0x20:
                if fields:
                    raise HpackError("a table size update after a field")
                size, pos = decode_integer(block, pos, 5)
                if size > MAX_TABLE_SIZE:
                    raise HpackError(f"a table size of {size} over {MAX_TABLE_SIZE}")
                self.table_size = size
                self._evict(0)
                continue
            else:
                field, pos = self._literal(block, pos, 4)
            total += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if total > limit:
                raise HpackError(f"a header list over {limit} bytes", True)
            fields.append(field)
        return fields

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_COUNT:
            return _STATIC[index - 1]
        position = len(self._table) - (index - _STATIC_COUNT)
        if index == 0 or position < 0:
            raise HpackError(f"no table entry {index}")
        return self._table[position]

    def _literal(self, block: bytes, pos: int, prefix_bits: int) -> tuple[tuple[bytes, bytes], int]:
        index, pos = decode_integer(block, pos, prefix_bits)
        if index:
            name = self._field(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return (name, value), pos

    def _string(self, block: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(block):
            raise HpackError("a string cut short")
        huffman = block[pos] & 0x80
        length, pos = decode_integer(block, pos, 7)
        stop = pos + length
        if stop > len(block):
            raise HpackError("a string longer than its block")
        data = block[pos:stop]
        return (decode_huffman(data) if huffman else data), stop

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self.table_size:
            self._table.clear()  # an entry bigger than the table empties it (RFC 7541 section 4.4)
            self._table_bytes = 0
            return
        self._evict(size)
        self._table.append(field)
        self._table_bytes += size

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until `room` more bytes fit the table size."""
        table = self._table
        while table and self._table_bytes + room > self.table_size:
            name, value = table.pop(0)
            self._table_bytes -= len(name) + len(value) + ENTRY_OVERHEAD

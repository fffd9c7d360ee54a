"""HPACK encoding without a dynamic table (proxy.http.hpack_encoder), checked by an independent decoder (hpack)."""

from __future__ import annotations

from hpack import Decoder
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.hpack_encoder import encode_field, encode_fields, encode_integer

names = st.sampled_from([b":method", b":path", b":status", b"content-type", b"te", b"authorization", b"x-custom",
                         b"grpc-status", b"user-agent", b"cookie", b"www-authenticate"]) | st.binary(min_size=1,
                                                                                                  max_size=40)
values = st.binary(max_size=300)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=20))
def test_every_block_decodes_to_the_fields_lowercased(fields: list[tuple[bytes, bytes]]) -> None:
    decoder = Decoder(max_header_list_size=1 << 30)
    decoded = decoder.decode(encode_fields(fields), raw=True)
    assert [(bytes(n), bytes(v)) for n, v in decoded] == [(n.lower(), v) for n, v in fields]
    # nothing entered the decoder's dynamic table: a block means the same whatever came before it
    assert len(decoder.header_table.dynamic_entries) == 0


def test_static_table_matches_are_one_byte_and_names_are_indexed() -> None:
    assert encode_field(b":method", b"GET") == b"\x82"
    assert encode_field(b":status", b"200") == b"\x88"
    # content-type is static entry 31: a 4-bit prefix index of 15 + 16, then the value as a plain literal
    assert encode_field(b"content-type", b"application/grpc") == b"\x0f\x10\x10application/grpc"


def test_credentials_are_never_indexed_literals() -> None:
    assert encode_field(b"authorization", b"Bearer x")[0] & 0xF0 == 0x10
    assert encode_field(b"x-custom", b"v")[0] == 0x00


def test_integers_use_continuation_bytes_past_the_prefix() -> None:
    assert encode_integer(10, 5, 0) == b"\x0a"
    assert encode_integer(1337, 5, 0) == b"\x1f\x9a\x0a"  # RFC 7541 appendix C.1.2
    assert encode_integer(31, 5, 0xE0) == b"\xff\x00"


def test_the_cache_gives_the_same_bytes_and_stays_bounded() -> None:
    fields = [(b"x-request-id", b"%d" % i) for i in range(10_000)]
    first = encode_fields(fields)
    assert encode_fields(fields) == first
    from proxy.http import hpack_encoder

    assert len(hpack_encoder._cache) <= hpack_encoder.CACHE_LIMIT

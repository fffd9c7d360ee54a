"""HPACK decoding (proxy.http.hpack_decoder) against an independent encoder (hpack, which uses the dynamic
table and Huffman coding) and the RFC 7541 appendix C examples; bad blocks are refused with HpackError."""

from __future__ import annotations

import pytest
from hpack import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http.hpack_decoder import HeaderDecoder, HpackError

names = st.sampled_from([b":method", b":path", b":status", b"content-type", b"x-custom", b"grpc-status",
                         b"authorization", b"user-agent"]) | st.binary(min_size=1, max_size=30).map(bytes.lower)
values = st.binary(max_size=200)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(names, values), max_size=12), min_size=1, max_size=6), st.booleans())
def test_blocks_from_hpacks_encoder_decode_in_order(blocks: list[list[tuple[bytes, bytes]]], huffman: bool) -> None:
    encoder = Encoder()
    decoder = HeaderDecoder(1 << 30)
    for fields in blocks:  # one connection: later blocks refer to entries earlier ones added
        assert decoder.decode(encoder.encode(fields, huffman=huffman)) == fields


def test_rfc_7541_c4_requests_with_huffman_share_one_table() -> None:
    decoder = HeaderDecoder(1 << 20)
    first = bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")
    assert decoder.decode(first) == [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                     (b":authority", b"www.example.com")]
    second = bytes.fromhex("828684be5886a8eb10649cbf")
    assert decoder.decode(second) == [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                      (b":authority", b"www.example.com"), (b"cache-control", b"no-cache")]
    third = bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf")
    assert decoder.decode(third)[-1] == (b"custom-key", b"custom-value")


def test_rfc_7541_c6_responses_evict_from_a_256_byte_table() -> None:
    decoder = HeaderDecoder(1 << 20)
    decoder.decode(b"\x3f\xe1\x01")  # a size update to 256 bytes
    block = bytes.fromhex("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff"
                          "6e919d29ad171863c78f0b97c8e9ae82ae43d3")
    assert decoder.decode(block) == [(b":status", b"302"), (b"cache-control", b"private"),
                                     (b"date", b"Mon, 21 Oct 2013 20:13:21 GMT"),
                                     (b"location", b"https://www.example.com")]
    second = bytes.fromhex("4883640effc1c0bf")
    assert decoder.decode(second)[0] == (b":status", b"307")
    assert decoder._table_bytes <= 256


@pytest.mark.parametrize(("block", "why"), [
    (b"\x80", "no table entry 0"),
    (b"\xbe", "no table entry 62"),  # an empty dynamic table
    (b"\x00\x05ab", "longer than its block"),  # a 5-byte name with 2 bytes left
    (b"\x3f\xe2\x1f", "4097 over 4096"),  # a size update above what we allow
    (b"\x82\x20", "after a field"),
    (b"\x00\x81\xff\x00", "Huffman"),  # EOS padding longer than 7 bits
    (b"\xff\xff\xff\xff\xff\xff\x01", r"over 2\^35"),
])
def test_bad_blocks_are_refused(block: bytes, why: str) -> None:
    with pytest.raises(HpackError, match=why):
        HeaderDecoder(1 << 20).decode(block)


def test_a_list_over_the_limit_is_refused_as_oversized() -> None:
    encoded = Encoder().encode([(b"x-a", b"v" * 100), (b"x-b", b"v" * 100)])
    with pytest.raises(HpackError) as raised:
        HeaderDecoder(200).decode(encoded)
    assert raised.value.oversized
    assert len(HeaderDecoder(300).decode(encoded)) == 2

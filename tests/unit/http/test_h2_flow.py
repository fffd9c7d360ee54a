"""`next_piece`: a window takes whole chunks, or the head of one (the rest stays first in line)."""

from __future__ import annotations

from proxy.http.h2_flow import next_piece


def test_a_chunk_that_fits_is_taken_whole_and_a_larger_one_is_split() -> None:
    out = [b"abc", b"defgh"]
    assert next_piece(out, 5) == b"abc" and out == [b"defgh"]
    assert next_piece(out, 2) == b"de" and out == [b"fgh"]
    assert next_piece(out, 3) == b"fgh" and out == []

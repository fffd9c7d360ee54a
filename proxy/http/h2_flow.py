"""HTTP/2 flow control's one shared step for both codecs: taking the next bytes a window allows.

Owns `next_piece`: the server codec (response bodies) and the client codec (request bodies) keep the bytes
waiting for a peer's window as a list of chunks and send them a window at a time. Must not do I/O or know
streams.
"""

from __future__ import annotations


def next_piece(out: list[bytes], window: int) -> bytes:
    """The next bytes of `out` (chunks waiting, oldest first) that fit `window` (> 0): the first chunk whole,
    or its head, the rest staying first in line."""
    piece = out[0]
    if len(piece) <= window:
        out.pop(0)
        return piece
    out[0] = piece[window:]
    return piece[:window]

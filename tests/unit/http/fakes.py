"""Network-free doubles for driving the HTTP/1.1 codecs (ServerConnection, ClientConnection) directly.

`FakeTransport` stands in for an asyncio transport: it collects written bytes and records close, abort
and reading pauses. `Driver` owns a real event loop, feeds bytes to a protocol in pieces (honouring
pause_reading the way a real transport would) and lets the loop run the tasks the codec starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any


class FakeTransport:
    """Enough of asyncio.Transport for the codecs: writes are collected, close/abort/pauses recorded."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.paused = False
        self.writes_after_close = 0
        self._peer = peer

    def write(self, data: bytes) -> None:
        if self.closed:
            self.writes_after_close += 1
            return
        self.written += data

    def writelines(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        return default

    def get_write_buffer_size(self) -> int:
        return 0


class ErrorLog(logging.Handler):
    """Collects ERROR records (a codec logs an unexpected exception instead of raising it)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Driver:
    """A real event loop plus the bookkeeping to feed a protocol and notice anything that escapes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.errors = ErrorLog()
        logging.getLogger("proxy").addHandler(self.errors)

    def settle(self, rounds: int = 8) -> None:
        """Let the loop run whatever is ready (handler tasks, callbacks) a few times over."""
        for _ in range(rounds):
            self.loop.run_until_complete(asyncio.sleep(0))

    def feed(self, protocol: asyncio.Protocol, transport: FakeTransport, pieces: Iterable[bytes],
             settle_between: bool = False) -> None:
        """Deliver `pieces` via data_received, as a transport would: never while reading is paused."""
        for piece in pieces:
            if transport.paused:
                self.settle()
            if transport.paused or transport.closed:
                return  # a real transport delivers nothing more
            protocol.data_received(piece)
            if settle_between:
                self.settle(2)

    def close(self) -> None:
        logging.getLogger("proxy").removeHandler(self.errors)
        self.settle()
        self.loop.close()


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (out-of-range and repeated offsets are ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    pieces: list[bytes] = []
    start = 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces

"""Memory of the sidecar: idle RSS, RSS with many idle keep-alive clients, RSS growth while streaming.

All RSS figures are the sum of VmRSS over the sidecar's process tree (what a container is charged).
Idle connections are opened from this process with plain non-blocking sockets, a batch at a time, each
doing one request and then staying open and silent. Streams use a raw socket client against
benchmarks/stream_upstream.py through the sidecar, with a sampler thread reading RSS every 20 ms; each
side stalls for a moment half-way so the sidecar's backpressure (not the peers' speed) bounds memory.
Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass

from benchmarks.rig import rss_bytes

MB = 1_000_000
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench-idle\r\n\r\n"


def settle_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after letting the process settle (freed buffers, finished callbacks)."""
    time.sleep(seconds)
    return rss_bytes(pid)


class RssSampler(threading.Thread):
    """Samples the tree's RSS every `interval` seconds until stopped; `peak` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop_event.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop_event.set()
        self.join(5)
        self.peak = max(self.peak, rss_bytes(self.pid))


def _response_complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is None or len(body) >= int(match.group(1))


def open_idle_connections(port: int, count: int, batch: int = 500, deadline_s: float = 120.0) -> list[socket.socket]:
    """Open `count` keep-alive connections, each answered once, then left idle; fewer if time runs out.

    A batch at a time (the listener's backlog is 1024): connect all, send one request each, wait for every
    answer. The caller closes the returned sockets.
    """
    opened: list[socket.socket] = []
    deadline = time.monotonic() + deadline_s
    sel = selectors.DefaultSelector()
    try:
        while len(opened) < count and time.monotonic() < deadline:
            pending: dict[socket.socket, bytearray] = {}
            for _ in range(min(batch, count - len(opened))):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                pending[sock] = bytearray()
                sel.register(sock, selectors.EVENT_WRITE)
            batch_deadline = min(deadline, time.monotonic() + 30.0)
            while pending and time.monotonic() < batch_deadline:
                for key, events in sel.select(timeout=0.5):
                    sock = key.fileobj  # type: ignore[assignment]
                    assert isinstance(sock, socket.socket)
                    if events & selectors.EVENT_WRITE:
                        try:
                            sock.send(REQUEST)
                        except OSError:
                            sel.unregister(sock)
                            sock.close()
                            del pending[sock]
                            continue
                        sel.modify(sock, selectors.EVENT_READ)
                        continue
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    buf = pending[sock]
                    buf += chunk
                    if not chunk or _response_complete(bytes(buf)):
                        sel.unregister(sock)
                        del pending[sock]
                        if chunk:
                            opened.append(sock)
                        else:
                            sock.close()
            for sock in pending:  # not answered in time: not counted
                sel.unregister(sock)
                sock.close()
    except BaseException:
        close_all(opened)
        raise
    finally:
        sel.close()
    return opened


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()
    socks.clear()


@dataclass
class StreamResult:
    direction: str
    bytes: int
    seconds: float
    status: int
    baseline_rss: int
    peak_rss: int
    samples: int

    @property
    def growth(self) -> int:
        return max(0, self.peak_rss - self.baseline_rss)

    def as_dict(self) -> dict[str, object]:
        return {
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.bytes / MB / self.seconds, 1) if self.seconds else None,
            "status": self.status,
            "baseline_rss_mb": round(self.baseline_rss / MB, 1),
            "peak_rss_mb": round(self.peak_rss / MB, 1),
            "max_growth_mb": round(self.growth / MB, 1),
            "rss_samples": self.samples,
        }


def _read_head(sock: socket.socket) -> tuple[int, bytes]:
    """Status and the body bytes that came with the head."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError(f"connection closed before the response head ({bytes(data[:80])!r})")
        data += chunk
        if len(data) > 65536:
            raise OSError("response head too large")
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def stream_upload(pid: int, port: int, size: int, timeout: float = 300.0) -> StreamResult:
    """POST `size` bytes through the sidecar (the upstream discards them); RSS peak during the transfer."""
    baseline = settle_rss(pid, 0.5)
    chunk = memoryview(bytes(1024 * 1024))
    started = time.monotonic()
    with RssSampler(pid) as sampler, socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /stream/upload HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\n"
                     b"content-length: %d\r\n\r\n" % size)
        remaining = size
        deadline = started + timeout
        while remaining and time.monotonic() < deadline:
            piece = min(remaining, len(chunk))
            sock.sendall(chunk[:piece])
            remaining -= piece
        if remaining:
            raise OSError(f"upload not finished within {timeout:g}s")
        status, _ = _read_head(sock)
    return StreamResult("upload", size, time.monotonic() - started, status, baseline, sampler.peak, sampler.samples)


def stream_download(pid: int, port: int, size: int, stall: float = 0.5, timeout: float = 300.0) -> StreamResult:
    """GET `size` bytes through the sidecar, pausing `stall` s half-way; RSS peak during the transfer."""
    baseline = settle_rss(pid, 0.5)
    buf = bytearray(1024 * 1024)
    started = time.monotonic()
    with RssSampler(pid) as sampler, socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /stream/download?bytes=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % size)
        status, first = _read_head(sock)
        received, stalled = len(first), False
        deadline = started + timeout
        while received < size and time.monotonic() < deadline:
            n = sock.recv_into(buf)
            if n == 0:
                raise OSError(f"download cut after {received} of {size} bytes")
            received += n
            if stall and not stalled and received >= size // 2:
                # A slow client: the sidecar must stop reading its upstream rather than buffer.
                stalled = True
                time.sleep(stall)
        if received < size:
            raise OSError(f"download not finished within {timeout:g}s")
    return StreamResult("download", size, time.monotonic() - started, status, baseline, sampler.peak, sampler.samples)

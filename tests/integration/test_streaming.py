"""Streaming and backpressure: large bodies flow through the sidecar in bounded memory.

The sidecar runs as a real subprocess (`python -m proxy run -c FILE`, uvloop, as in production) so its
resident set can be sampled from /proc/PID/status while a raw upstream and a raw client in this process
move hundreds of MiB through it. Each peer is slow at first (the sidecar must stop reading the fast side
rather than buffer) and then fast (throughput must not suffer). The 1 GiB runs are marked slow; the
200 MiB runs are in the default suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.raw import RawClient, RawRequest, RawUpstream, outbound_config

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = 256 * 1024
RSS_GROWTH_LIMIT = 20 * MiB
SLOW_PHASE = 0.5  # seconds during which the slow side moves only a trickle


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@dataclass
class RssSampler:
    """Samples a process's RSS every few milliseconds in a background task; `peak` is the maximum."""

    pid: int
    baseline: int = 0
    peak: int = 0
    samples: list[int] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            rss = _rss(self.pid)
            self.samples.append(rss)
            self.peak = max(self.peak, rss)
            await asyncio.sleep(0.01)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


class StreamUpstream:
    """A raw upstream that generates `GET /down/N` bodies and discards `POST /up` bodies (never buffers)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.received = 0
        self.slow_read = False

    async def start(self) -> StreamUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, _, rest = head.partition(b"\r\n")
                _, target, _ = request_line.split(b" ")
                length = 0
                match = re.search(rb"(?i)content-length: *(\d+)", rest)
                if match:
                    length = int(match.group(1))
                if target.startswith(b"/down/"):
                    await self._send(writer, int(target[6:]))
                else:
                    got = await self._discard(reader, length)
                    body = b"%d" % got
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
        writer.close()

    async def _send(self, writer: asyncio.StreamWriter, size: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        block = b"\xab" * CHUNK
        left = size
        while left > 0:
            piece = block if left >= CHUNK else block[:left]
            writer.write(piece)
            left -= len(piece)
            await writer.drain()

    async def _discard(self, reader: asyncio.StreamReader, length: int) -> int:
        got = 0
        started = time.monotonic()
        while got < length:
            if self.slow_read and time.monotonic() - started < SLOW_PHASE:
                data = await reader.read(min(4096, length - got))
                await asyncio.sleep(0.01)
            else:
                data = await reader.read(min(MiB, length - got))
            if not data:
                break
            got += len(data)
        self.received += got
        return got

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class SidecarProcess:
    proc: asyncio.subprocess.Process
    port: int


@contextlib.asynccontextmanager
async def sidecar_process(config_path: Path) -> AsyncIterator[SidecarProcess]:
    """Run `python -m proxy run -c FILE`; yields once its first log line names the bound listener."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "run", "-c", str(config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        port = 0
        async with asyncio.timeout(10):
            while not port:
                line = await proc.stderr.readline()
                if not line:
                    raise RuntimeError(f"sidecar exited early with {await proc.wait()}")
                match = re.search(rb"outbound=127\.0\.0\.1:(\d+)", line)
                if match:
                    port = int(match.group(1))
        yield SidecarProcess(proc, port)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _download(port: int, size: int) -> int:
    """GET size bytes, reading a trickle for SLOW_PHASE seconds, then as fast as possible."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=64 * 1024)
    writer.write(b"GET /down/%d HTTP/1.1\r\nhost: x\r\n\r\n" % size)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    got = 0
    started = time.monotonic()
    while got < size:
        if time.monotonic() - started < SLOW_PHASE:
            data = await reader.read(4096)
            await asyncio.sleep(0.01)
        else:
            data = await reader.read(MiB)
        if not data:
            break
        got += len(data)
    writer.close()
    return got


async def _upload(port: int, size: int) -> bytes:
    """POST size bytes, writing a trickle for SLOW_PHASE seconds, then as fast as the socket drains."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size)
    block = b"\xcd" * MiB
    sent = 0
    started = time.monotonic()
    while sent < size:
        step = 4096 if time.monotonic() - started < SLOW_PHASE else MiB
        piece = block[:min(step, size - sent)]
        writer.write(piece)
        sent += len(piece)
        await writer.drain()
        if step == 4096:
            await asyncio.sleep(0.01)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    body = await reader.readexactly(length)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


async def _measured(sidecar_proc: SidecarProcess, transfer: Callable[[], object]) -> tuple[RssSampler, float]:
    # Warm up (imports, first connection, pool) before the baseline, so the growth is the transfer's.
    await _download(sidecar_proc.port, 1024)
    sampler = RssSampler(sidecar_proc.proc.pid)
    sampler.baseline = _rss(sidecar_proc.proc.pid)
    task = asyncio.create_task(sampler.run())
    started = time.monotonic()
    try:
        await transfer()  # type: ignore[misc]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    sampler.peak = max(sampler.peak, _rss(sidecar_proc.proc.pid))
    return sampler, time.monotonic() - started


async def _run_download(write_config: Callable[[str], Path], size: int) -> None:
    upstream = await StreamUpstream().start()
    path = write_config(outbound_config(f"127.0.0.1:{upstream.port}"))
    async with sidecar_process(path) as proc:
        result: list[int] = []

        async def transfer() -> None:
            result.append(await _download(proc.port, size))

        sampler, elapsed = await _measured(proc, transfer)
    await upstream.stop()
    assert result == [size]
    assert sampler.growth < RSS_GROWTH_LIMIT, (
        f"sidecar RSS grew {sampler.growth / MiB:.1f} MiB moving {size / MiB:.0f} MiB down in {elapsed:.1f}s")


async def _run_upload(write_config: Callable[[str], Path], size: int) -> None:
    upstream = await StreamUpstream().start()
    upstream.slow_read = True
    path = write_config(outbound_config(f"127.0.0.1:{upstream.port}"))
    async with sidecar_process(path) as proc:
        result: list[bytes] = []

        async def transfer() -> None:
            result.append(await _upload(proc.port, size))

        sampler, elapsed = await _measured(proc, transfer)
    await upstream.stop()
    assert result == [b"%d" % size]
    assert sampler.growth < RSS_GROWTH_LIMIT, (
        f"sidecar RSS grew {sampler.growth / MiB:.1f} MiB moving {size / MiB:.0f} MiB up in {elapsed:.1f}s")


async def test_200mib_download_in_bounded_memory(write_config: Callable[[str], Path]) -> None:
    await _run_download(write_config, 200 * MiB)


async def test_200mib_upload_in_bounded_memory(write_config: Callable[[str], Path]) -> None:
    await _run_upload(write_config, 200 * MiB)


@pytest.mark.slow
async def test_1gib_download_in_bounded_memory(write_config: Callable[[str], Path]) -> None:
    await _run_download(write_config, GiB)


@pytest.mark.slow
async def test_1gib_upload_in_bounded_memory(write_config: Callable[[str], Path]) -> None:
    await _run_upload(write_config, GiB)


# -- in-process: backpressure must not leave connections paused -----------------------------------------


async def _big_then_small(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    if request.target == b"/big":
        size = 8 * MiB
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        block = b"z" * CHUNK
        for _ in range(size // CHUNK):
            writer.write(block)
            await writer.drain()
    else:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsmall")


async def test_pooled_connection_is_usable_after_a_slowly_read_download(sidecar) -> None:  # type: ignore[no-untyped-def]
    # The last bytes of a big response can arrive while the upstream socket is paused for the slow
    # client; the connection then goes back to the pool, and must be reading again for the next request.
    upstream = await RawUpstream(_big_then_small).start()
    running = await sidecar(outbound_config(upstream.address))
    for _ in range(3):
        slow = await RawClient.connect(running.port())
        slow.send(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        got = 0
        async with asyncio.timeout(5):
            while got < 8 * MiB:
                data = await slow.reader.read(65536)
                assert data
                got += len(data)
                # Slow to the end, so the sidecar is paused when the response's last bytes come in.
                await asyncio.sleep(0.001)
        other = await RawClient.connect(running.port())
        other.send(b"GET /small HTTP/1.1\r\nhost: x\r\n\r\n")
        (reply,) = await other.responses(1, timeout=2)
        assert reply.body == b"small"
        slow.close()
        other.close()
    assert upstream.connections == 1
    await upstream.stop()


async def test_client_connection_is_usable_after_a_slowly_read_upload(sidecar) -> None:  # type: ignore[no-untyped-def]
    # The mirror case: a big request body paused the client socket (upstream slow); after the answer,
    # the same client connection must be read again for its next request.
    upstream = await StreamUpstream().start()
    upstream.slow_read = True
    running = await sidecar(outbound_config(f"127.0.0.1:{upstream.port}"))
    client = await RawClient.connect(running.port())
    size = 8 * MiB
    for _ in range(2):
        client.send(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size)
        client.send(b"u" * size)
        client.send(b"GET /up HTTP/1.1\r\nhost: x\r\n\r\n")
        replies = await client.responses(2, timeout=5)
        assert [r.body for r in replies] == [b"%d" % size, b"0"]
    client.close()
    await upstream.stop()

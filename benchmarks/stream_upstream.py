"""A raw asyncio upstream for the memory run: discards uploads, generates downloads, keep-alive.

`POST /stream/upload` (Content-Length N): reads and drops N bytes, stopping reading for `--stall`
seconds half-way (a slow service: the sidecar must then stop reading its client, not buffer), answers
200. `GET /stream/download?bytes=N`: answers 200 with N bytes written with flow control (drain).
Anything else: 200 with a short body. Deliberately minimal: no chunked requests, no pipelining.
Run: `python -m benchmarks.stream_upstream --port P [--stall 0.5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re

CHUNK = bytes(1024 * 1024)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stall: float) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, _, rest = head.partition(b"\r\n")
            length_match = re.search(rb"(?im)^content-length:\s*(\d+)", rest)
            length = int(length_match.group(1)) if length_match else 0
            target = request_line.split(b" ")[1] if b" " in request_line else b"/"
            if length:
                remaining, stalled = length, False
                while remaining:
                    data = await reader.read(min(remaining, 1024 * 1024))
                    if not data:
                        return
                    remaining -= len(data)
                    if stall and not stalled and remaining <= length // 2:
                        stalled = True
                        await asyncio.sleep(stall)
            size_match = re.search(rb"bytes=(\d+)", target)
            if target.startswith(b"/stream/download") and size_match:
                size = int(size_match.group(1))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                             b"content-length: %d\r\n\r\n" % size)
                view = memoryview(CHUNK)
                while size:
                    piece = min(size, len(CHUNK))
                    writer.write(view[:piece])
                    size -= piece
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                await writer.drain()
    writer.close()


async def serve(port: int, stall: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, stall), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stall", type=float, default=0.5, help="seconds to stop reading half-way through an upload")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.stall))


if __name__ == "__main__":
    main()

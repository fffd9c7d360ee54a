"""Raw-socket peers for integration tests: an HTTP/1.1 upstream on asyncio streams and a byte-level client.

aiohttp hides what the tests here must see: how many TCP connections were opened, the exact bytes and
header lines on the wire, and upstreams that misbehave on purpose (close while idle, send garbage, answer
HTTP/1.0 without a length, send 103 first). Requests are parsed with httptools (llhttp), responses read by
the client side with httptools too, so neither side trusts the sidecar's own codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable

import httptools


@dataclasses.dataclass
class RawRequest:
    """A request as the upstream saw it: header names lower-cased, values raw."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connection: int  # 1-based index of the TCP connection it came on
    index: int  # 1-based index of the request on that connection

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def names(self) -> set[bytes]:
        return {name for name, _ in self.headers}


# (request, writer) -> None; the handler writes raw response bytes and may close the writer.
RawHandler = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[None]]


class _RequestCollector:
    """httptools callbacks collecting whole requests (bodies in memory: test sizes are small)."""

    def __init__(self) -> None:
        self.done: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.done.append((method, self._url, self._headers, b"".join(self._body)))


def response(status: int = 200, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
             reason: bytes = b"OK", length: bool = True) -> bytes:
    """Wire bytes of a simple HTTP/1.1 response with a Content-Length (unless `length` is False)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers or []:
        lines.append(name + b": " + value + b"\r\n")
    if length:
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    return b"".join(lines) + body


async def _default_handler(request: RawRequest, writer: asyncio.StreamWriter) -> None:
    writer.write(response(200, b"ok:" + request.target))


class RawUpstream:
    """An upstream server on 127.0.0.1 that counts connections and records every request."""

    def __init__(self, handler: RawHandler | None = None) -> None:
        self.handler = handler or _default_handler
        self.connections = 0
        self.requests: list[RawRequest] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        collector = _RequestCollector()
        index = 0
        try:
            while not writer.is_closing():
                data = await reader.read(65536)
                if not data:
                    break
                # An upgrade request is answered like any other (this upstream never upgrades).
                with contextlib.suppress(httptools.HttpParserUpgrade):
                    collector.parser.feed_data(data)
                while collector.done:
                    method, target, headers, body = collector.done.pop(0)
                    index += 1
                    request = RawRequest(method, target, headers, body, number, index)
                    self.requests.append(request)
                    await self.handler(request, writer)
                    if writer.is_closing():
                        break
                    await writer.drain()
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def drop_connections(self) -> None:
        """Close every open connection (as an upstream restart does)."""
        for writer in list(self.writers):
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.drop_connections()
        if self._tasks:
            # Let the per-connection handlers see their closed sockets and end before the loop does.
            await asyncio.wait(self._tasks, timeout=1)


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    http_version: str

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def names(self) -> set[bytes]:
        return {name for name, _ in self.headers}


class _ResponseCollector:
    def __init__(self) -> None:
        self.done: list[RawResponse] = []
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

        self.in_body = False

    def on_message_begin(self) -> None:
        self._headers, self._body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_body = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def eof(self) -> None:
        """The connection ended: a close-delimited body (llhttp needs llhttp_finish, which httptools
        does not expose) is complete now."""
        names = {name for name, _ in self._headers}
        if self.in_body and not names & {b"content-length", b"transfer-encoding"}:
            self.on_message_complete()

    def on_message_complete(self) -> None:
        self.in_body = False
        self.done.append(RawResponse(self.parser.get_status_code(), self._headers, b"".join(self._body),
                                     self.parser.get_http_version()))


class RawClient:
    """A client that writes exact bytes and reads responses back with httptools."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._collector = _ResponseCollector()
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def responses(self, count: int, timeout: float = 3.0) -> list[RawResponse]:
        """Read until `count` complete responses have arrived (or EOF; then fewer are returned)."""
        async with asyncio.timeout(timeout):
            while len(self._collector.done) < count and not self.eof:
                data = await self.reader.read(65536)
                if not data:
                    self.eof = True
                    self._collector.eof()
                    break
                self._collector.parser.feed_data(data)
        done, self._collector.done = self._collector.done[:count], self._collector.done[count:]
        return done

    async def closed(self, timeout: float = 3.0) -> bool:
        """True when the server closes the connection (EOF or reset) within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.writer.close()


def outbound_config(upstream: str | list[str], listener_extra: str = "", route_extra: str = "", top_extra: str = "",
                    cluster_extra: str = "") -> str:
    """A one-listener, one-route, one-cluster config (one endpoint or several); extras are YAML lines
    indented for their place."""
    listed = ", ".join(f'"{e}"' for e in ([upstream] if isinstance(upstream, str) else upstream))
    return f"""
    admin: {{address: "127.0.0.1:0"}}
    {top_extra}
    listeners:
      - name: outbound
        address: "127.0.0.1:0"
        {listener_extra}
        routes:
          - name: all
            match: {{prefix: /}}
            cluster: backend
            {route_extra}
    clusters:
      - name: backend
        endpoints: [{listed}]
        {cluster_extra}
    """

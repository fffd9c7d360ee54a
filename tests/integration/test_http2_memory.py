"""HTTP/2 flow control keeps a sidecar process's memory bounded (issue 19): a client that never reads a huge
response holds its own window, not the sidecar's memory; a client that uploads faster than the upstream reads
is held by the windows the sidecar gives back only for bytes the upstream took.

The sidecar runs as a subprocess (`python -m proxy run`) so its RSS can be read from /proc, as in
test_hostile_peers.py; the upstream is a threaded raw HTTP/1.1 server.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest

from tests.conftest import free_port
from tests.integration.test_hostile_peers import RSS_BUDGET, RssWatch, Sidecar

ATTACK_SECONDS = 1.5
HUGE = 1 << 30


class Upstream(socketserver.BaseRequestHandler):
    """/huge: a 1 GiB response written as fast as the socket takes it; /slow-sink: reads the request body at
    64 KiB per 100 ms; anything else: a small 200."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        rest = b""
        try:
            while True:
                while b"\r\n\r\n" not in rest:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    rest += chunk
                head, _, rest = rest.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/huge":
                    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % HUGE)
                    block = b"\0" * 65536
                    for _ in range(HUGE // len(block)):
                        sock.sendall(block)
                    return
                if path == b"/slow-sink":
                    while True:
                        time.sleep(0.1)
                        if not sock.recv(65536):
                            return
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except OSError:
            return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    upstream = Server(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    config = tmp_path_factory.mktemp("h2mem") / "sidecar.yaml"
    config.write_text(f"""
admin: {{address: "127.0.0.1:{admin}"}}
listeners:
  - name: outbound
    address: "127.0.0.1:{port}"
    http: {{stream_idle_timeout: 60s}}
    routes:
      - {{name: all, match: {{prefix: /}}, cluster: up}}
clusters:
  - name: up
    endpoints: ["127.0.0.1:{upstream.server_address[1]}"]
""")
    running = Sidecar(config, port, admin)
    try:
        yield running
    finally:
        running.stop()
        upstream.shutdown()
        upstream.server_close()


def _client(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _headers(path: str, method: str = "GET") -> list[tuple[bytes, bytes]]:
    return [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", path.encode())]


def _healthy_seconds(sidecar: Sidecar) -> float:
    started = time.monotonic()
    assert sidecar.get("/ok")[0] == 200
    return time.monotonic() - started


def test_a_client_that_never_reads_a_huge_response_costs_bounded_memory(sidecar: Sidecar) -> None:
    for _ in range(20):
        _healthy_seconds(sidecar)
    watch = RssWatch(sidecar)
    sock, conn = _client(sidecar.port)
    try:
        conn.send_headers(1, _headers("/huge"), end_stream=True)
        sock.sendall(conn.data_to_send())
        time.sleep(ATTACK_SECONDS)  # never read: the client's window (64 KiB) and socket buffers fill
        assert _healthy_seconds(sidecar) < 0.1
        growth = watch.growth
        assert growth < RSS_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB"
        # Now read a little: the stream is alive, and flows again as windows open.
        sock.settimeout(5)
        received = 0
        while received < 4 << 20:
            data = sock.recv(65536)
            assert data
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    finally:
        sock.close()


def test_an_upload_faster_than_the_upstream_reads_costs_bounded_memory(sidecar: Sidecar) -> None:
    watch = RssWatch(sidecar)
    sock, conn = _client(sidecar.port)
    sock.settimeout(0.05)
    sent = 0
    try:
        conn.send_headers(1, _headers("/slow-sink", "POST"), end_stream=False)
        sock.sendall(conn.data_to_send())
        deadline = time.monotonic() + ATTACK_SECONDS
        block = b"x" * 16384
        while time.monotonic() < deadline:
            window = min(conn.local_flow_control_window(1), len(block))
            if window > 0:
                conn.send_data(1, block[:window])
                sent += window
            try:
                data = sock.recv(65536)
                if data:
                    conn.receive_data(data)
            except TimeoutError:
                pass
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        growth = watch.growth
        assert growth < RSS_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB after {sent} bytes"
        # The upstream takes 64 KiB per 100 ms (~1 MiB in the attack); windows and buffers add a few MiB at most.
        assert sent < 12 << 20, sent
        assert _healthy_seconds(sidecar) < 0.1
    finally:
        sock.close()

"""Hostile peers against a sidecar process: bounded memory, a healthy request still fast, nothing hangs.

The sidecar runs as users run it (`python -m proxy run`), so its resident memory can be read from
/proc while an attack runs. The hostile upstream is a threaded raw-socket server whose behaviour is
chosen by the request path: endless header lines, one endless header line, too many headers, endless
trailers and chunk extensions, a close-delimited body in a transfer coding other than chunked, a status
outside 100-599, and a request that is never answered. The hostile clients are raw sockets: a chunked
request whose trailer never ends, pipelined requests from a client that never reads, and fifty clients
that send a request and close.

Each attack checks what the issue "Hardening" asks: the sidecar's RSS stays within a few MB of where it
was before (the old code grew by ~140 MB/s), a healthy request made while the attack runs is answered
in under 100 ms, and the hostile connection is closed.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import select
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
# "Within a few MB of idle": the old code grew by hundreds of MB in the same time.
RSS_BUDGET = 12 * 1024 * 1024
ATTACK_SECONDS = 1.5
HEALTHY_SECONDS = 0.1
STALLED_CLIENTS = 50


# -- the hostile upstream ------------------------------------------------------------------------


@dataclass
class UpstreamLog:
    """What the hostile upstream saw: per path, how long until the sidecar closed each connection."""

    closed_after: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, path: str, seconds: float) -> None:
        with self.lock:
            self.closed_after.setdefault(path, []).append(seconds)

    def count(self, path: str) -> int:
        with self.lock:
            return len(self.closed_after.get(path, []))


def _flood(sock: socket.socket, first: bytes, unit: bytes, limit: float) -> bool:
    """Send `first`, then `unit` again and again until the peer closes (True) or `limit` passes."""
    sock.sendall(first)
    sock.settimeout(0.2)
    block = unit * max(1, 16384 // len(unit))
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            sock.send(block)
        except TimeoutError:
            continue  # the sidecar is not reading: fine, as long as it closes us in the end
        except OSError:
            return True
    return False


def _wait_closed(sock: socket.socket, limit: float) -> bool:
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


FLOOD_LIMIT = 8.0


class HostileHandler(socketserver.BaseRequestHandler):
    server: HostileServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        path = data.split(b" ", 2)[1].decode()
        self.request_head = data
        started = time.monotonic()
        closed = self._behave(sock, path)
        if closed:
            self.server.log.record(path, time.monotonic() - started)

    def _behave(self, sock: socket.socket, path: str) -> bool:
        if path == "/ok":
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            return False
        if path == "/endless-headers":
            return _flood(sock, b"HTTP/1.1 200 OK\r\n", b"x-filler: 0123456789\r\n", FLOOD_LIMIT)
        if path == "/endless-header-line":
            return _flood(sock, b"HTTP/1.1 200 OK\r\nx-long: ", b"a", FLOOD_LIMIT)
        if path == "/endless-status-line":
            return _flood(sock, b"HTTP/1.1 200 ", b"O", FLOOD_LIMIT)
        if path == "/many-headers":
            sock.sendall(b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(101))
                         + b"content-length: 2\r\n\r\nok")
            return _wait_closed(sock, FLOOD_LIMIT)
        if path == "/endless-trailers":
            head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
            return _flood(sock, head, b"x-trailer: 0123456789\r\n", FLOOD_LIMIT)
        if path == "/endless-trailer-line":
            head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: "
            return _flood(sock, head, b"a", FLOOD_LIMIT)
        if path == "/endless-chunk-extension":
            head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext="
            return _flood(sock, head, b"a", FLOOD_LIMIT)
        if path == "/gzip-close":
            sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\n"
                         + b"\x1f\x8b" + b"z" * 5000)
            sock.shutdown(socket.SHUT_WR)
            return _wait_closed(sock, FLOOD_LIMIT)
        if path.startswith("/status-"):
            status = path.removeprefix("/status-").encode()
            sock.sendall(b"HTTP/1.1 %s Odd\r\ncontent-length: 2\r\n\r\nok" % status)
            return _wait_closed(sock, FLOOD_LIMIT)
        if path in ("/stall", "/wait-body"):
            return _wait_closed(sock, 30)
        if path == "/big-then-stall":
            # 3 MB of a 30 MB body, then nothing: the client will be far behind.
            sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 30000000\r\n\r\n" + b"x" * 3_000_000)
            return _wait_closed(sock, 30)
        if path == "/answer-first":
            # 2 MB of the answer before reading the request body, the answer's end after it (a server that
            # streams as it reads).
            head, _, rest = self.request_head.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            sock.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n" % (2 * 2**20)
                         + b"z" * (2 * 2**20) + b"\r\n")
            got = len(rest)
            while got < length:
                data = sock.recv(65536)
                if not data:
                    return True
                got += len(data)
            sock.sendall(b"0\r\n\r\n")
            return False
        if path == "/close-delimited-reset":
            sock.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npartial-body")
            time.sleep(0.1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, not a FIN
            return True
        sock.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        return False


class HostileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.log = UpstreamLog()


# -- the sidecar process -------------------------------------------------------------------------


class Sidecar:
    def __init__(self, config: Path, port: int, admin: int) -> None:
        self.port = port
        self.admin = admin
        self.proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(config)], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, b"".join(self.stderr).decode()
            with contextlib.suppress(OSError):
                if self.get("/ok")[0] == 200:
                    return
            time.sleep(0.05)
        raise AssertionError("the sidecar did not start: " + b"".join(self.stderr).decode())

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def get(self, path: str, port: int | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def metric(self, pattern: str) -> float:
        _, _, body = self.get("/metrics", self.admin)
        total = 0.0
        for line in body.decode().splitlines():
            if re.match(pattern, line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, HostileServer]]:
    upstream = HostileServer()
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, admin = free_port(), free_port()
    config = tmp_path_factory.mktemp("hostile") / "sidecar.yaml"
    config.write_text(f"""
admin: {{address: "127.0.0.1:{admin}"}}
listeners:
  - name: outbound
    address: "127.0.0.1:{port}"
    http: {{stream_idle_timeout: 60s}}
    routes:
      - {{name: denied, match: {{prefix: /denied}}, cluster: hostile, fault: {{abort: {{status: 403, percent: 100}}}}}}
      - {{name: all, match: {{prefix: /}}, cluster: hostile}}
clusters:
  - name: hostile
    endpoints: ["127.0.0.1:{upstream.server_address[1]}"]
    limits: {{max_requests: {STALLED_CLIENTS}, max_pending: 0}}
""")
    sidecar = Sidecar(config, port, admin)
    try:
        yield sidecar, upstream
    finally:
        sidecar.stop()
        upstream.shutdown()
        upstream.server_close()


class RssWatch:
    """Samples the sidecar's RSS on a thread while an attack runs; `growth` is the peak over the start."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.start = sidecar.rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, self.sidecar.rss())

    @property
    def growth(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sidecar.rss())
        return self.peak - self.start


def _healthy_seconds(sidecar: Sidecar, port: int | None = None, path: str = "/ok") -> float:
    started = time.monotonic()
    status, _, _ = sidecar.get(path, port)
    assert status == 200
    return time.monotonic() - started


def _warm(sidecar: Sidecar) -> None:
    for _ in range(20):
        _healthy_seconds(sidecar)


# -- 1. upstream response heads are bounded ------------------------------------------------------


@pytest.mark.parametrize("path", ["/endless-headers", "/endless-header-line", "/endless-status-line"])
def test_an_endless_response_head_is_refused_with_502_in_bounded_memory(
        hostile: tuple[Sidecar, HostileServer], path: str) -> None:
    sidecar, upstream = hostile
    _warm(sidecar)
    before = upstream.log.count(path)
    watch = RssWatch(sidecar)
    started = time.monotonic()
    status, headers, body = sidecar.get(path)
    elapsed = time.monotonic() - started
    healthy = _healthy_seconds(sidecar)
    growth = watch.growth
    assert status == 502, body
    assert "error=http_response_header_section_size" in headers["proxy-status"]
    assert b"Traceback" not in body
    assert elapsed < 2, f"the oversize head took {elapsed:.2f}s to refuse"
    assert growth < RSS_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert healthy < HEALTHY_SECONDS, f"a healthy request took {healthy * 1000:.0f} ms during the attack"
    # The sidecar closed the hostile upstream connection (never pooled).
    deadline = time.monotonic() + 3
    while upstream.log.count(path) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.log.count(path) == before + 1, f"hostile upstream not closed: {upstream.log.closed_after}"
    assert upstream.log.closed_after[path][-1] < 3


def test_a_response_head_with_too_many_headers_is_refused(hostile: tuple[Sidecar, HostileServer]) -> None:
    sidecar, _ = hostile
    status, headers, _ = sidecar.get("/many-headers")
    assert status == 502
    assert "error=http_response_header_section_size" in headers["proxy-status"]
    assert "max_response_header_count (100)" in headers["proxy-status"]


# -- 2. trailers are bounded, both directions ----------------------------------------------------


@pytest.mark.parametrize("path", ["/endless-trailers", "/endless-trailer-line", "/endless-chunk-extension"])
def test_endless_response_trailers_break_off_the_response_in_bounded_memory(
        hostile: tuple[Sidecar, HostileServer], path: str) -> None:
    sidecar, upstream = hostile
    _warm(sidecar)
    before = upstream.log.count(path)
    watch = RssWatch(sidecar)
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as client:
        client.sendall(b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path.encode())
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                received += chunk
    healthy = _healthy_seconds(sidecar)
    growth = watch.growth
    assert growth < RSS_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert healthy < HEALTHY_SECONDS, f"a healthy request took {healthy * 1000:.0f} ms during the attack"
    # The response had started (its head went out): the client sees it broken off, never completed.
    # (its body, not the head: a request id ending in "0" puts "0\r\n\r\n" at the end of any head)
    assert not received.partition(b"\r\n\r\n")[2].endswith(b"0\r\n\r\n"), received[-200:]
    deadline = time.monotonic() + 3
    while upstream.log.count(path) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.log.count(path) == before + 1, f"hostile upstream not closed: {upstream.log.closed_after}"


def test_an_endless_request_trailer_gets_431_in_bounded_memory(hostile: tuple[Sidecar, HostileServer]) -> None:
    sidecar, _ = hostile
    _warm(sidecar)
    refused_before = sidecar.metric(r'sidecar_requests_total\{.*code="431"')
    watch = RssWatch(sidecar)
    timings: list[float] = []
    answer = b""
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as client:
        client.sendall(b"POST /wait-body HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\nx-t: ")
        block = b"a" * 65536
        client.settimeout(0.2)
        deadline = time.monotonic() + ATTACK_SECONDS
        # The sidecar answers and closes while we are still sending: a send may then meet a reset, and the
        # reset may even overtake the answer (the kernel drops what was unread), so the answer is checked
        # here when it arrives and in the sidecar's own count of 431s in any case.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            while time.monotonic() < deadline and not answer:
                with contextlib.suppress(TimeoutError):
                    client.send(block)
                readable, _, _ = select.select([client], [], [], 0)
                if readable:
                    answer = client.recv(65536) or b"closed"
                if len(timings) < 3:
                    timings.append(_healthy_seconds(sidecar))
    growth = watch.growth
    assert answer in (b"", b"closed") or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    if answer.startswith(b"HTTP/1.1"):
        assert b"error=http_request_error" in answer
    assert sidecar.metric(r'sidecar_requests_total\{.*code="431"') == refused_before + 1
    assert growth < RSS_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert timings and max(timings) < HEALTHY_SECONDS, timings


# -- 3. a pipelining client that never reads -----------------------------------------------------


@pytest.mark.parametrize("target", ["local-replies", "admin"])
def test_a_pipelining_client_that_never_reads_costs_bounded_memory(
        hostile: tuple[Sidecar, HostileServer], target: str) -> None:
    sidecar, _ = hostile
    _warm(sidecar)
    # Answers the sidecar makes at once, without an upstream: a fault abort, or the admin's /live.
    port = sidecar.port if target == "local-replies" else sidecar.admin
    path = "/denied" if target == "local-replies" else "/live"
    request = b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path.encode()
    watch = RssWatch(sidecar)
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    block = request * (65536 // len(request))
    sent = 0
    timings: list[float] = []
    deadline = time.monotonic() + ATTACK_SECONDS
    try:
        while time.monotonic() < deadline:
            try:
                sent += client.send(block)
            except BlockingIOError:
                time.sleep(0.01)
            if len(timings) < 3 and sent > 1 << 20:
                timings.append(_healthy_seconds(sidecar, port, "/ok" if port == sidecar.port else "/live"))
        growth = watch.growth
    finally:
        client.close()
    # The old code answered every request into an ever-growing buffer: 311k requests, 369 MB.
    assert growth < RSS_BUDGET, f"RSS grew by {growth / 2**20:.1f} MiB after {sent // len(request)} requests"
    # Reading stopped: the client could not push more than the socket buffers hold.
    assert sent < 64 * 2**20
    assert timings and max(timings) < HEALTHY_SECONDS, timings


# -- 7. a client that leaves is noticed at once --------------------------------------------------


def test_clients_that_send_and_close_cancel_their_upstream_requests(hostile: tuple[Sidecar, HostileServer]) -> None:
    sidecar, upstream = hostile
    before_closed = upstream.log.count("/stall")
    before_499 = sidecar.metric(r'sidecar_requests_total\{.*code="499"')
    clients = []
    for _ in range(STALLED_CLIENTS):
        client = socket.create_connection(("127.0.0.1", sidecar.port))
        client.sendall(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n")
        clients.append(client)
    time.sleep(0.3)  # every request reached the upstream and holds a bulkhead slot
    for client in clients:
        client.close()
    deadline = time.monotonic() + 3
    while upstream.log.count("/stall") < before_closed + STALLED_CLIENTS and time.monotonic() < deadline:
        time.sleep(0.02)
    # Each upstream connection was closed by the sidecar within moments, not after stream_idle_timeout.
    assert upstream.log.count("/stall") == before_closed + STALLED_CLIENTS
    # Their bulkhead slots are free again (max_requests is exactly the number of stalled clients).
    assert _healthy_seconds(sidecar) < HEALTHY_SECONDS
    assert sidecar.metric(r'sidecar_requests_total\{.*code="499"') == before_499 + STALLED_CLIENTS
    assert sidecar.metric(r"sidecar_downstream_connections\{") <= 1
    # Nothing of the sidecar's is left in CLOSE-WAIT towards the clients.
    assert _close_wait_sockets(sidecar.port) == 0
    assert any(b"before the response" in line for line in sidecar.stderr)


def _close_wait_sockets(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "08":  # 08 = CLOSE_WAIT
                    count += 1
    return count


# -- 11, 13. framing is never invented; statuses outside 100-599 -----------------------------------


def test_a_close_delimited_body_in_another_transfer_coding_is_refused_not_reframed(
        hostile: tuple[Sidecar, HostileServer]) -> None:
    sidecar, _ = hostile
    status, headers, body = sidecar.get("/gzip-close")
    assert status == 502
    assert "error=http_protocol_error" in headers["proxy-status"]
    assert "Transfer-Encoding" in headers["proxy-status"]
    assert b"zzz" not in body


@pytest.mark.parametrize("status", ["600", "099", "000", "999"])
def test_an_upstream_status_outside_100_to_599_is_a_502(hostile: tuple[Sidecar, HostileServer],
                                                         status: str) -> None:
    sidecar, _ = hostile
    code, headers, _ = sidecar.get(f"/status-{status}")
    assert code == 502
    assert "error=http_protocol_error" in headers["proxy-status"]


def test_the_sidecar_logged_no_traceback(hostile: tuple[Sidecar, HostileServer]) -> None:
    sidecar, _ = hostile
    assert not any(b"Traceback" in line for line in sidecar.stderr), b"".join(sidecar.stderr).decode()


# -- review regressions: half-close mid-response, a body sent before its answer is read, a reset body ----


def test_a_half_close_while_the_answer_is_unread_does_not_hold_the_socket(
        hostile: tuple[Sidecar, HostileServer]) -> None:
    sidecar, upstream = hostile
    before = upstream.log.count("/big-then-stall")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", sidecar.port))
    try:
        client.sendall(b"GET /big-then-stall HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.5)  # the answer is flowing; the client reads none of it
        client.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (_close_wait_sockets(sidecar.port)
                                              or upstream.log.count("/big-then-stall") == before):
            time.sleep(0.05)
        # Neither the client's socket (CLOSE-WAIT on our side) nor the upstream request is kept.
        assert _close_wait_sockets(sidecar.port) == 0
        assert upstream.log.count("/big-then-stall") == before + 1
    finally:
        client.close()


def test_a_body_sent_before_its_answer_is_read_does_not_deadlock(hostile: tuple[Sidecar, HostileServer]) -> None:
    sidecar, _ = hostile
    size = 30 * 2**20
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", sidecar.port))
    client.settimeout(10)
    try:
        client.sendall(b"POST /answer-first HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size)
        started = time.monotonic()
        client.sendall(b"u" * size)  # the whole body before reading anything (curl-like simple clients)
        sent_in = time.monotonic() - started
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):
            data = client.recv(1 << 20)
            if not data:
                break
            received += data
    finally:
        client.close()
    assert sent_in < 5, f"the body took {sent_in:.1f}s: reading stalled on the answer's backpressure"
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"z" * 1000 + b"\r\n0\r\n\r\n")


def test_a_close_delimited_body_cut_by_a_reset_is_never_completed(hostile: tuple[Sidecar, HostileServer]) -> None:
    sidecar, _ = hostile
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as client:
        client.sendall(b"GET /close-delimited-reset HTTP/1.1\r\nhost: x\r\n\r\n")
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while data := client.recv(65536):
                received += data
    assert received.startswith(b"HTTP/1.1 200 OK")
    # The client sees the response broken off, never a final chunk that says it was whole.
    assert not received.partition(b"\r\n\r\n")[2].endswith(b"0\r\n\r\n"), received

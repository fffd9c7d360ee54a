"""TLS handshakes per second on one core: what a new mTLS connection costs the sidecar.

`python -m benchmarks.handshakes` starts the sidecar (`python -m proxy run`, from the repository or from
`--tree DIR`, a `scripts/build-compiled` copy) pinned to one CPU, with a listener that requires client
certificates (ECDSA P-256 from `sidecar certs`) and one route that answers locally (a fault abort with
status 200: no upstream, so only the sidecar is measured). Client processes on the other CPU each loop:
connect, full handshake with a client certificate, one `GET`, close. It reports connections per second and
the sidecar's own CPU seconds per connection (from /proc), whose inverse is the handshake rate one core of
the sidecar sustains, whether or not the clients kept it busy. `--keep-alive` measures requests on
already-open TLS connections instead, and `--plain` the same loop without TLS, for comparison.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import ssl
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from benchmarks.rig import REPO, Pinning, Rig, cpu_seconds, free_port, signals_raise

SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
REQUEST = b"GET /bench HTTP/1.1\r\nhost: bench\r\n\r\n"
TLS = "tls: {cert: server.pem, key: server-key.pem, ca: ca/ca.pem, require_client_cert: true}"


def _context(pki: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(pki / "ca" / "ca.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client-key.pem"))
    context.minimum_version = context.maximum_version = version
    return context


def _read_answer(sock: ssl.SSLSocket) -> None:
    """One whole response (the local reply has a Content-Length); raises OSError on anything but a 200."""
    data = b""
    while True:
        head, found, body = data.partition(b"\r\n\r\n")
        if found:
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            if len(body) >= length:
                if not head.startswith(b"HTTP/1.1 200 "):
                    raise OSError(head[:40].decode(errors="replace"))
                return
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed before the answer")
        data += chunk


def _client(port: int, pki: Path, seconds: float, keep_alive: bool, version: str, out: multiprocessing.Queue) -> None:
    import socket

    context = _context(pki, ssl.TLSVersion[version]) if version != "plain" else None
    done = failed = 0
    deadline = time.monotonic() + seconds
    held: ssl.SSLSocket | None = None
    while time.monotonic() < deadline:
        try:
            if held is None:
                raw = socket.create_connection(("127.0.0.1", port))
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                held = context.wrap_socket(raw) if context is not None else raw  # type: ignore[assignment]
            held.sendall(REQUEST)
            _read_answer(held)
            done += 1
        except OSError:
            failed += 1
            if held is not None:
                held.close()
            held = None
            continue
        if not keep_alive:
            held.close()
            held = None
    out.put((done, failed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.handshakes", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--tree", type=Path, default=REPO, help="run `python -m proxy` from here (a compiled copy)")
    parser.add_argument("--tls", choices=("TLSv1_3", "TLSv1_2"), default="TLSv1_3")
    parser.add_argument("--keep-alive", action="store_true", help="requests on open connections instead")
    parser.add_argument("--plain", action="store_true", help="no TLS (the connection cost alone)")
    args = parser.parse_args(argv)

    from proxy.security.certs import init_ca, issue

    pinning = Pinning.detect()
    with tempfile.TemporaryDirectory(prefix="handshakes-") as tmp, signals_raise():
        work = Path(tmp)
        init_ca(work / "ca")
        issue(work / "ca", SERVER_ID, work / "server")
        issue(work / "ca", CLIENT_ID, work / "client")
        port, admin = free_port(), free_port()
        config = work / "sidecar.yaml"
        config.write_text(textwrap.dedent(f"""
            admin: {{address: "127.0.0.1:{admin}"}}
            listeners:
              - name: inbound
                address: "127.0.0.1:{port}"
                {"" if args.plain else TLS}
                routes:
                  - name: local
                    match: {{prefix: /}}
                    cluster: none
                    fault: {{abort: {{status: 200, percent: 100}}}}
            clusters:
              - name: none
                endpoints: ["127.0.0.1:9"]
            """))
        rig = Rig(work, pinning)
        sidecar = rig.start("sidecar", [sys.executable, "-m", "proxy", "run", "-c", str(config)], pinning.proxy,
                            cwd=args.tree)
        try:
            deadline = time.monotonic() + 20
            version = "plain" if args.plain else args.tls
            while True:
                try:
                    _client_once(port, work, version)
                    break
                except OSError:
                    if time.monotonic() > deadline or not sidecar.alive():
                        print(sidecar.log_tail(), file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            queue: multiprocessing.Queue = multiprocessing.Queue()
            workers = [multiprocessing.Process(target=_pinned_client, args=(
                pinning.load, port, work, args.seconds, args.keep_alive, version, queue))
                for _ in range(args.clients)]
            before = cpu_seconds(sidecar.pid)
            began = time.monotonic()
            for worker in workers:
                worker.start()
            results = [queue.get(timeout=args.seconds + 60) for _ in workers]
            elapsed = time.monotonic() - began
            used = cpu_seconds(sidecar.pid) - before
            for worker in workers:
                worker.join()
        finally:
            rig.close()
    done = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    what = "plain" if args.plain else f"{args.tls} mTLS"
    kind = f"requests on open {what} connections" if args.keep_alive else f"new {what} connections"
    print(f"{kind}: {done} in {elapsed:.1f}s = {done / elapsed:,.0f}/s ({failed} failed), {args.clients} clients "
          f"({pinning.note}); sidecar from {args.tree}")
    if done:
        per = used / done
        print(f"sidecar CPU: {used:.2f}s = {per * 1e3:.3f} ms per {'request' if args.keep_alive else 'connection'}"
              f" -> {1 / per:,.0f}/s on one core")
    return 0


def _pinned_client(cpu: str | None, *args: object) -> None:
    import os

    if cpu is not None:
        os.sched_setaffinity(0, {int(cpu)})
    _client(*args)  # type: ignore[arg-type]


def _client_once(port: int, pki: Path, version: str) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        if version == "plain":
            raw.sendall(REQUEST)
            _read_answer(raw)  # type: ignore[arg-type]
            return
        with _context(pki, ssl.TLSVersion[version]).wrap_socket(raw) as sock:
            sock.sendall(REQUEST)
            _read_answer(sock)


if __name__ == "__main__":
    sys.exit(main())

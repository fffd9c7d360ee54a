"""HTTP/2 over a TLS listener, on the loop the sidecar runs on (uvloop) and asyncio's: a client that ends
with GOAWAY and its TLS close_notify in one flight (nghttp does) gets its answer, and the sidecar logs no
error. (Closing the TLS transport from inside the read that delivered the GOAWAY made uvloop run its
shutdown twice: "Fatal error on SSL protocol: cannot switch state".)"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_http2 import config
from tests.integration.upstreams import start_upstream
from tests.pki import Pki, spiffe

LOOPS = ("asyncio", "uvloop")
NGHTTP = shutil.which("nghttp")


@pytest.mark.skipif(NGHTTP is None, reason="needs nghttp (nghttp2-client)")
async def test_a_client_goaway_with_its_tls_close_logs_no_error(sidecar: Callable[[str], Awaitable[object]],
                                                                 tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    assert NGHTTP is not None
    pki = Pki(tmp_path / "pki")
    cert, key = pki.leaf("server", spiffe("server"), dns_names=["localhost"])
    upstream = await start_upstream()
    running: Any = await sidecar(config(upstream.address).replace(
        "        routes:", f"        tls: {{cert: {cert}, key: {key}}}\n        routes:", 1))
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(5):
                proc = await asyncio.create_subprocess_exec(
                    NGHTTP, "-n", "-s", f"https://127.0.0.1:{running.port()}/tls",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await asyncio.wait_for(proc.communicate(), 20)
                assert proc.returncode == 0, err
                assert b" 200 " in out or b"200" in out, out[-300:]
            await asyncio.sleep(0.1)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], [r.getMessage() for r in errors]
    finally:
        await upstream.stop()

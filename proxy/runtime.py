"""Process runtime: the event loop (uvloop), signals, and running an App until it has drained.

Owns installing uvloop, logging set-up, SIGTERM/SIGINT -> drain, and the exit code. Worker processes
(SO_REUSEPORT) and SIGHUP reload plug in here. Must not build request-path objects (app.py does).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from proxy.app import App
from proxy.config.load import LoadedConfig

log = logging.getLogger("proxy.runtime")


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def serve(loaded: LoadedConfig) -> int:
    """Run until SIGTERM/SIGINT or POST /shutdown, then drain; 0 after a clean drain."""
    app = App(loaded)
    try:
        await app.start()
    except OSError as exc:
        print(f"sidecar: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, app.request_shutdown)
    log.info("%s", app.describe_bound())
    await app.wait_for_shutdown()
    log.info("draining (up to %gs)", loaded.config.drain_timeout)
    await app.drain_and_stop()
    log.info("stopped")
    return 0


def run(loaded: LoadedConfig) -> int:
    """Run the sidecar in this process on uvloop; returns the exit code."""
    uvloop.install()
    return asyncio.run(serve(loaded))

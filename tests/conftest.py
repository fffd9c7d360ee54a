"""Shared test fixtures: free ports, config files, and a sidecar App running on the test's event loop."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy.app import App
from proxy.config.load import load_config

# The event loops a test module may ask to run on, by setting `LOOPS = ("asyncio", "uvloop")`: code that
# depends on how a loop makes its transports (TLS above all) is tested on the one the sidecar runs on too.
_LOOP_FACTORIES: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(config: pytest.Config, item: Any) -> Mapping[str, Callable[[], Any]]:
    """pytest-asyncio's hook: asyncio's own loop, unless the test's module names its `LOOPS`."""
    module = getattr(item, "module", None)
    names = getattr(module, "LOOPS", ("asyncio",))
    return {name: _LOOP_FACTORIES[name] for name in names}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write a YAML config (dedented) into the test's tmp dir and return its path."""

    def write(text: str, name: str = "sidecar.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


class RunningSidecar:
    """An App started in-process on 127.0.0.1 ports picked by the OS; `url(path)` targets a listener."""

    def __init__(self, app: App) -> None:
        self.app = app

    def port(self, listener: str = "outbound") -> int:
        return self.app.bound[listener][1]

    @property
    def admin_port(self) -> int:
        return self.app.bound["admin"][1]

    def url(self, path: str = "/", listener: str = "outbound") -> str:
        return f"http://127.0.0.1:{self.port(listener)}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"


@pytest.fixture
async def sidecar(write_config: Callable[[str], Path]) -> AsyncIterator[Callable[[str], object]]:
    """Start a sidecar from YAML text (listeners and admin on port 0); stopped at the end of the test."""
    apps: list[App] = []

    async def start(text: str) -> RunningSidecar:
        app = App(load_config(write_config(text)))
        await app.start()
        apps.append(app)
        return RunningSidecar(app)

    yield start
    for app in apps:
        if not app.stopped.is_set():
            await app.drain_and_stop()

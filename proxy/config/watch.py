"""Watching the config file on disk: a change (edit in place, replace by rename, Kubernetes ConfigMap
symlink swap) triggers a reload within 2 s.

Owns polling the file once a second: `os.stat` follows symlinks, so a ConfigMap's `..data` swap shows as
a new inode; a changed stat is confirmed by a content hash, so touching the file without changing it
does nothing. Polling, not inotify: it sees all three kinds of change the same way, needs no extra
dependency, and costs one stat a second. Must not load or validate configs (the app's reload does, and
coalesces this watch's reports with SIGHUPs).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("proxy.config.watch")

POLL_SECONDS = 1.0


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # mid-rename or removed for a moment: keep the last known state
    return st.st_ino, st.st_mtime_ns, st.st_size


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Calls `on_change()` when the content of `path` changes."""

    def __init__(self, path: Path, on_change: Callable[[], None], interval: float = POLL_SECONDS) -> None:
        self.path = path
        self.on_change = on_change
        self.interval = interval
        self._stat = _fingerprint(path)
        self._digest = _digest(path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            stat = _fingerprint(self.path)
            if stat is None or stat == self._stat:
                continue
            self._stat = stat
            # In a thread, like the reload it triggers: a large file read and hashed on the loop delays requests.
            digest = await asyncio.to_thread(_digest, self.path)
            if digest is None or digest == self._digest:
                continue
            self._digest = digest
            log.info("config file changed on disk: %s", self.path)
            self.on_change()

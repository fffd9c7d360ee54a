"""API keys files: reading and checking one, and keeping each one's keys current while the sidecar runs.

Owns the format of a route's `api_key.keys_file`, a YAML mapping of the SHA-256 digest of each allowed key
(64 hex digits, as `printf %s KEY | sha256sum` prints it) to the name of the service the key belongs to:

    afc782480cb4361d459757bd8381e9d88b8dcb579c9d276ee5c5a2672ae59311: campaign-service

`{}` is a file that allows no key; an empty file is refused (it is what a half-done write looks like).
Problems name the keys file and the line (`keys file /etc/keys.yaml:3: ...`) and never quote a key or a
digest: a malformed entry may be a plain key pasted by mistake. `validate` reads every keys file of a
config (a missing, unreadable or malformed one refuses the config), and so does start-up.

`KeyStores` holds one `ApiKeyStore` per file (routes naming the same file share it) and `watch` polls
them once a second, as proxy.config.watch polls the config file (a changed stat, then a changed content
hash, so a ConfigMap or Secret symlink swap, a rename and an edit in place all count): a good new file
replaces the store's keys at once, for the next request; a bad one (removed, unreadable, malformed) is
logged and the keys read before stay. Each worker process polls its own copy.
Must not log a key, a digest or a line of the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

import yaml

from proxy.filters.apikey import ApiKeys, ApiKeyStore

log = logging.getLogger("proxy.filters.keysfile")

POLL_SECONDS: Final = 1.0
# A keys file holds a line per client service: a megabyte is thousands of times what one needs.
MAX_BYTES: Final = 1024 * 1024
_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HOW_TO_HASH: Final = "printf %s KEY | sha256sum"

Fingerprint = tuple[int, int, int]


class KeysFileError(ValueError):
    """What is wrong with a keys file, at `line` (0: the file as a whole)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"keys file {where}: {message}")


def parse_keys(raw: bytes, path: str) -> ApiKeys:
    """A keys file's bytes -> its keys; raises `KeysFileError` naming the first problem."""
    if len(raw) > MAX_BYTES:
        raise KeysFileError(path, 0, f"larger than {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KeysFileError(path, raw[: exc.start].count(b"\n") + 1, "not UTF-8 text") from None
    try:
        # Composed, never constructed: every scalar stays the text as written (a digest of digits only is
        # not an integer), and an alias is one node, not a copy.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # The problem only, never exc's own text: it quotes the offending line, which may hold a key.
        mark = exc.problem_mark or exc.context_mark
        raise KeysFileError(path, mark.line + 1 if mark is not None else 0,
                            f"YAML syntax error: {exc.problem or exc.context or 'malformed'}") from None
    except yaml.YAMLError:
        raise KeysFileError(path, 0, "YAML syntax error") from None
    if root is None:
        raise KeysFileError(path, 0, "the file is empty (write {} for a file that allows no key)")
    if not isinstance(root, yaml.MappingNode):
        raise KeysFileError(path, root.start_mark.line + 1,
                            "must be a mapping of SHA-256 hex digests of keys to service names")
    return ApiKeys(_entries(root, path))


def _entries(root: yaml.MappingNode, path: str) -> list[tuple[bytes, str]]:
    entries: list[tuple[bytes, str]] = []
    first: dict[bytes, int] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode) or not _DIGEST.fullmatch(key_node.value):
            raise KeysFileError(path, line, "a key must be the SHA-256 digest of an API key, 64 hex digits "
                                            f"(`{HOW_TO_HASH}`), never the key itself")
        digest = bytes.fromhex(key_node.value)
        if digest in first:
            raise KeysFileError(path, line, f"the same digest twice (first at line {first[digest]})")
        first[digest] = line
        entries.append((digest, _service_name(value_node, path)))
    return entries


def _service_name(node: yaml.Node, path: str) -> str:
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null" or not node.value:
        raise KeysFileError(path, line, "the service name must be a non-empty string")
    name = str(node.value)
    if _CONTROL.search(name):
        raise KeysFileError(path, line, "the service name must not contain control characters")
    return name


def read_keys_file(path: str) -> ApiKeys:
    """Read and parse a keys file; raises `KeysFileError` (unreadable files included)."""
    return parse_keys(_read(path), path)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise KeysFileError(path, 0, f"cannot read it: {exc.strerror or exc}") from None


def _fingerprint(path: str) -> Fingerprint | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class _Watched:
    """One keys file: its store, and the stat and content hash of what was last read (or refused)."""

    store: ApiKeyStore
    stat: Fingerprint | None
    digest: str


@dataclass(frozen=True)
class _Reading:
    """A keys file read again: its stat and content hash, and its keys or what is wrong with it."""

    stat: Fingerprint | None
    digest: str
    keys: ApiKeys | None
    error: KeysFileError | None


def _read_again(path: str) -> _Reading:
    """Blocking (a watcher runs it in a thread): stat, read and parse one keys file."""
    stat = _fingerprint(path)
    try:
        raw = _read(path)
    except KeysFileError as exc:
        return _Reading(stat, "", None, exc)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        return _Reading(stat, digest, parse_keys(raw, path), None)
    except KeysFileError as exc:
        return _Reading(stat, digest, None, exc)


class KeyStores:
    """The keys files of the running config, one store per file, and the poller that keeps them current."""

    def __init__(self, interval: float = POLL_SECONDS) -> None:
        self.interval = interval
        self._watched: dict[str, _Watched] = {}

    @property
    def paths(self) -> list[str]:
        return list(self._watched)

    def store(self, path: str) -> ApiKeyStore:
        """The store of the keys file at `path` (absolute), read now if no route used it yet; raises
        `KeysFileError`."""
        watched = self._watched.get(path)
        if watched is None:
            reading = _read_again(path)
            if reading.keys is None:
                assert reading.error is not None
                raise reading.error
            watched = _Watched(ApiKeyStore(path, reading.keys), reading.stat, reading.digest)
            self._watched[path] = watched
        return watched.store

    def retain(self, paths: Collection[str]) -> None:
        """Stop watching the files no route of the running config names any more."""
        for path in [path for path in self._watched if path not in paths]:
            del self._watched[path]

    def refresh(self) -> None:
        """Re-read every file whose stat changed, here and now (the watcher does it in a thread)."""
        for path, watched in list(self._watched.items()):
            if _fingerprint(path) != watched.stat:
                self._settle(watched, _read_again(path))

    async def watch(self) -> None:
        """Poll every `interval`: a file whose stat changed is read again in a thread (the loop keeps
        serving), and its keys replaced when the new content is good."""
        while True:
            await asyncio.sleep(self.interval)
            for path, watched in list(self._watched.items()):
                if _fingerprint(path) == watched.stat:
                    continue
                reading = await asyncio.to_thread(_read_again, path)
                if self._watched.get(path) is watched:  # still in use after the await
                    self._settle(watched, reading)

    def _settle(self, watched: _Watched, reading: _Reading) -> None:
        """Take a new reading of a watched file: new keys when good and changed, else a log line."""
        path = watched.store.path
        watched.stat = reading.stat
        if reading.digest and reading.digest == watched.digest:
            return  # touched, or renamed over with the same content (or refused before): nothing new
        kept = len(watched.store.keys)
        if reading.keys is None:
            if reading.digest:
                watched.digest = reading.digest  # this content is refused once, not every poll
            log.error("api keys: %s; keeping the %d key(s) read before", reading.error, kept)
            return
        watched.digest = reading.digest
        watched.store.keys = reading.keys
        log.info("api keys: %s re-read: %d key(s) (%d before)", path, len(reading.keys), kept)

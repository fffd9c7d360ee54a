"""The Kubernetes API as discovery uses it: one authenticated client, LIST and WATCH of a collection, GET.

Owns finding the API server and its credentials (lightkube's `KubeConfig.from_env`: the in-cluster service
account when present, else `$KUBECONFIG` or `~/.kube/config`; the client lightkube's adapter builds, so
client certificates, bearer tokens re-read on 401, exec plugins and the cluster CA work as kubectl's do),
the requests themselves (`list`, `watch` with `allowWatchBookmarks`, `get`), and turning every failure
into a `KubeError` whose `kind` is a bounded label (`sidecar_discovery_errors_total`). Objects are decoded
into lightkube's models (msgspec structs) by the caller's type. The list -> watch -> 410 -> re-list loop is
not here (`kube_watch.py`); this module must not retry, sleep or keep state beyond the client.

Every wait has a bound: connecting and each non-watch request within `REQUEST_TIMEOUT`; a watch asks the
server to end it after `timeout_seconds` and the caller bounds the whole stream (an emulator, or a proxy in
between, may not end it); a watch line longer than `MAX_LINE` (one object) ends the stream as malformed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final, TypeVar

import httpx2 as httpx
import msgspec
from lightkube.config.client_adapter import AsyncClient, ConnectionParams
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core import decoders
from lightkube.core.exceptions import ConfigError

REQUEST_TIMEOUT: Final = 10.0
# One watch event (an EndpointSlice holds at most 1,000 endpoints: well under this).
MAX_LINE: Final = 8 * 1024 * 1024

# The `kind` label values of sidecar_discovery_errors_total for the Kubernetes API.
KUBE_ERROR_KINDS: Final = ("config", "unreachable", "unauthorized", "forbidden", "not_found", "gone",
                           "api_error", "malformed", "timeout")

T = TypeVar("T")


class KubeError(Exception):
    """A failed API call; `kind` is its metric label, `status` the HTTP status when there was one."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def status_kind(status: int) -> str:
    """The error kind of an HTTP error status from the API server."""
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 410: "gone"}.get(status, "api_error")


class _Meta(msgspec.Struct):
    resourceVersion: str | None = None  # the API's spelling


class _Bookmark(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)


class _Status(msgspec.Struct):
    code: int = 0
    reason: str | None = None
    message: str | None = None


class KubeApi:
    """One client for the API server, made on first use (a config that cannot be loaded is a `KubeError` of
    kind "config" each time it is tried, so the watches back off and try again: a token mounted late works)."""

    def __init__(self, config_loader: Any = None) -> None:
        # How the kubeconfig is found (tests may pass a loader; the default is lightkube's search order).
        self._load = config_loader if config_loader is not None else KubeConfig.from_env
        self._client: httpx.AsyncClient | None = None
        self.server: str | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            try:
                single = self._load().get()
                if single is None:
                    raise ConfigError("no current context")
                self._client = AsyncClient(single, ConnectionParams(timeout=httpx.Timeout(REQUEST_TIMEOUT)))
            except (ConfigError, OSError, KeyError, ValueError, AssertionError) as exc:
                raise KubeError("config", f"no usable Kubernetes API configuration: {exc}") from exc
            self.server = single.cluster.server
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(self, path: str, params: dict[str, str], *, stream: bool,
                    read_timeout: float | None) -> httpx.Response:
        client = self.client()
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=read_timeout)
        request = client.build_request("GET", path, params=params, timeout=timeout)
        try:
            response = await client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise KubeError("timeout", f"GET {path}: {type(exc).__name__}") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise KubeError("unreachable", f"GET {path}: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            body = (await response.aread())[:512].decode("utf-8", "replace")
            await response.aclose()
            raise KubeError(status_kind(response.status_code), f"GET {path}: HTTP {response.status_code}: {body}",
                            response.status_code)
        return response

    async def get(self, path: str, kind: type[T]) -> T:
        """One object."""
        response = await self._send(path, {}, stream=False, read_timeout=REQUEST_TIMEOUT)
        return _decode(response.content, kind, path)

    async def list(self, path: str, kind: type[T], params: dict[str, str]) -> tuple[str | None, list[T]]:
        """Every object of a collection (following `continue` pages), and the list's resourceVersion."""
        items: list[T] = []
        page = dict(params)
        while True:
            response = await self._send(path, page, stream=False, read_timeout=REQUEST_TIMEOUT)
            try:
                token, version, chunk = decoders.decode_list(response.content, kind)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise KubeError("malformed", f"GET {path}: {exc}") from exc
            items.extend(chunk)
            if not token:
                return version, items
            page = {**params, "continue": token}

    async def watch(self, path: str, kind: type[T], params: dict[str, str], resource_version: str | None,
                    timeout_seconds: int) -> AsyncGenerator[tuple[str, T | None, str | None], None]:
        """Events of a collection from `resource_version`: (type, object, resourceVersion) for ADDED,
        MODIFIED and DELETED; ("BOOKMARK", None, resourceVersion) for bookmarks. An ERROR event raises
        `KubeError` (kind "gone" for 410). Ends when the server ends the stream."""
        query = {**params, "watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        if resource_version is not None:
            query["resourceVersion"] = resource_version
        response = await self._send(path, query, stream=True, read_timeout=None)
        try:
            async for line in _lines(response, path):
                yield _event(line, kind, path)
        except httpx.TimeoutException as exc:
            raise KubeError("timeout", f"watch {path}: {type(exc).__name__}") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise KubeError("unreachable", f"watch {path}: {exc or type(exc).__name__}") from exc
        finally:
            await response.aclose()


async def _lines(response: httpx.Response, path: str) -> AsyncIterator[bytes]:
    """Newline-delimited watch events, each bounded by `MAX_LINE`."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line, buffer = buffer[:end], buffer[end + 1:]
            if line.strip():
                yield line
        if len(buffer) > MAX_LINE:
            raise KubeError("malformed", f"watch {path}: an event longer than {MAX_LINE} bytes")
    if buffer.strip():
        yield buffer


def _event(line: bytes, kind: type[T], path: str) -> tuple[str, T | None, str | None]:
    try:
        event = decoders.decode_watch_event(line)
        if event.type == "ERROR":
            status = msgspec.json.decode(event.object, type=_Status)
            code = status.code or 500
            raise KubeError(status_kind(code), f"watch {path}: {code} {status.reason}: {status.message}", code)
        if event.type == "BOOKMARK":
            return "BOOKMARK", None, msgspec.json.decode(event.object, type=_Bookmark).metadata.resourceVersion
        obj = decoders.decode_object(event.object, kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KubeError("malformed", f"watch {path}: {exc}") from exc
    return event.type, obj, obj.metadata.resourceVersion


def _decode(data: bytes, kind: type[T], path: str) -> T:
    try:
        result: T = decoders.decode_object(data, kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KubeError("malformed", f"GET {path}: {exc}") from exc
    return result


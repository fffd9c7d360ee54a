"""The access log: one line per finished request, written off the event loop.

Owns `AccessLogSink`, a record sink the app adds to every listener's request path when `access_log:` is
configured (with it absent, no sink exists and requests pay nothing). On the event loop, `record` only
decides whether the request is logged (errors always; successes with probability `success_sample`),
formats its line (JSON with a fixed key order, or the text format below) and appends it to a bounded
in-memory queue. A writer thread takes the queued lines in batches and writes each batch with one
`os.write` on a file descriptor opened `O_APPEND` (or stdout / stderr), so the loop never waits on a disk,
and workers of one sidecar writing the same file never interleave inside a line. A full queue drops the
line and counts it in `sidecar_access_log_lines_dropped_total` (as does a failed write): the log never
blocks a request and never grows without bound. `reopen` (SIGUSR1, for logrotate's `create` mode) makes
the writer open the path again; `close` writes every queued line before returning (the drain).

Text format (one line, fields separated by spaces, strings quoted, `-` for an empty value), modelled on
Envoy's default access log format:

    [START_TIME] "METHOD PATH" STATUS CAUSE BYTES_IN BYTES_OUT DURATION_MS UPSTREAM_MS SIDECAR_MS
    "USER_AGENT" "REQUEST_ID" "AUTHORITY" "ENDPOINT" LISTENER ROUTE CLUSTER ATTEMPTS RESET TRACE_ID
    "PEER_IDENTITY"

Must not block the event loop (no I/O in `record`), hold a lock the writer holds while writing, or be
compiled with mypyc (it is not on the request path when the access log is off).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import Counter

from proxy.telemetry.record import RequestRecord

log = logging.getLogger("proxy.telemetry.access_log")

# Lines waiting for the writer. At ~500 bytes a line this is ~8 MiB at most: several seconds of a busy
# worker's traffic, enough to ride out a slow disk, small enough to bound memory (docs/decisions/0021).
QUEUE_LINES: Final = 16384
# A batch is written whole (one write call): big enough to amortise the syscall, small enough that a
# partial write (a full pipe) is rare.
BATCH_LINES: Final = 512
# How long `close` waits for the writer to write what is queued (a stuck disk must not stop the exit).
CLOSE_TIMEOUT: Final = 10.0
# The writer gathers lines this long after the first one before writing them: one wake-up and one write
# per interval under load, not one per request (a wake-up costs the loop a GIL hand-off; Envoy flushes its
# access log files every second). Close and reopen cut the wait short.
FLUSH_INTERVAL: Final = 0.25
STDOUT: Final = "stdout"
STDERR: Final = "stderr"
_STREAM_FDS: Final = {STDOUT: 1, STDERR: 2}


def is_error(record: RequestRecord) -> bool:
    """Always logged, whatever the sampling: a 4xx or 5xx (499 when the client left), a reset response,
    or an answer the sidecar made itself."""
    return record.status >= 400 or record.reset or record.cause is not None


def _iso_time(wall: float, cache: list[Any]) -> str:
    """ISO-8601 UTC with milliseconds; the seconds part is cached (`cache` = [second, text])."""
    second, millis = divmod(round(wall * 1000), 1000)
    if cache[0] != second:
        cache[0] = second
        cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{cache[1]}.{millis:03d}Z"


def _request_parts(record: RequestRecord) -> tuple[str | None, str | None, str | None, str | None]:
    """Method, authority, path (as it arrived, with the query) and user agent; None where unknown."""
    head = record.head
    if head is None:  # refused before it had a head (malformed, oversize)
        return None, None, record.path or None, None
    # The path as it arrived (before rewrites); a request refused by the codec has only its head's.
    path: str | None = record.path or head.path or None
    query = head.query
    if query and path is not None:
        path = f"{path}?{query.decode('latin-1')}"
    agent = head.header(b"user-agent")
    return (head.method.decode("latin-1"), head.host_header.decode("latin-1") or head.authority or None, path,
            agent.decode("latin-1") if agent is not None else None)


FIELD_NAMES: Final = ("start_time", "method", "authority", "path", "status", "duration_ms", "upstream_ms",
                       "sidecar_ms", "bytes_in", "bytes_out", "listener", "route", "cluster", "endpoint", "attempts",
                       "cause", "reset", "request_id", "trace_id", "span_id", "sampled", "peer_identity",
                       "api_client", "user_agent")


def fields(record: RequestRecord, wall_end: float, cache: list[Any]) -> dict[str, Any]:
    """The access log's fields of `record`, in their fixed order. `wall_end` is the wall-clock time the
    request ended (its start is that minus its duration)."""
    method, authority, path, user_agent = _request_parts(record)
    cause = record.cause
    return {
        "start_time": _iso_time(wall_end - record.duration, cache),
        "method": method,
        "authority": authority,
        "path": path,
        "status": record.status,
        "duration_ms": round(record.duration * 1000, 3),
        "upstream_ms": round(record.upstream_time * 1000, 3),
        "sidecar_ms": round(record.sidecar_time * 1000, 3),
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "listener": record.listener,
        "route": record.route or None,
        "cluster": record.cluster or None,
        "endpoint": record.endpoint or None,
        "attempts": record.attempts,
        "cause": cause.error if cause is not None else None,
        "reset": record.reset,
        "request_id": record.request_id.decode("latin-1") or None,
        "trace_id": record.trace_id.decode("latin-1") or None,
        "span_id": record.span_id.decode("latin-1") or None,
        "sampled": record.sampled,
        "peer_identity": record.peer_identity or None,
        "api_client": record.api_client or None,
        "user_agent": user_agent,
    }


# The JSON line is one f-string over the record, strings escaped by the json module's C escaper: encoding
# the `fields()` dict with `JSONEncoder.encode` took 7.6 us a line; this is the same bytes (a test checks).
_ESCAPE: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii


def _j(value: str | None) -> str:
    return "null" if value is None else _ESCAPE(value)


def _jb(value: bytes) -> str:
    return _ESCAPE(value.decode("latin-1")) if value else "null"


def json_line(record: RequestRecord, wall_end: float, cache: list[Any]) -> str:
    method, authority, path, user_agent = _request_parts(record)
    cause = record.cause
    duration = record.duration
    upstream = record.upstream_time
    return (
        f'{{"start_time":"{_iso_time(wall_end - duration, cache)}","method":{_j(method)},'
        f'"authority":{_j(authority)},"path":{_j(path)},"status":{record.status},'
        f'"duration_ms":{round(duration * 1000, 3)!r},"upstream_ms":{round(upstream * 1000, 3)!r},'
        f'"sidecar_ms":{round(record.sidecar_time * 1000, 3)!r},"bytes_in":{record.bytes_in},'
        f'"bytes_out":{record.bytes_out},"listener":{_ESCAPE(record.listener)},"route":{_j(record.route or None)},'
        f'"cluster":{_j(record.cluster or None)},"endpoint":{_j(record.endpoint or None)},'
        f'"attempts":{record.attempts},"cause":{_j(cause.error if cause is not None else None)},'
        f'"reset":{"true" if record.reset else "false"},"request_id":{_jb(record.request_id)},'
        f'"trace_id":{_jb(record.trace_id)},"span_id":{_jb(record.span_id)},'
        f'"sampled":{"true" if record.sampled else "false"},"peer_identity":{_j(record.peer_identity or None)},'
        f'"api_client":{_j(record.api_client or None)},"user_agent":{_j(user_agent)}}}\n')


def _quoted(value: Any) -> str:
    if value is None:
        return '"-"'
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _bare(value: Any) -> str:
    if value is None:
        return "-"
    return str(value).replace(" ", "%20")


def text_line(record: RequestRecord, wall_end: float, cache: list[Any]) -> str:
    f = fields(record, wall_end, cache)
    request = f"{f['method'] or '-'} {f['path'] or '-'}".replace("\\", "\\\\").replace('"', '\\"')
    return (f"[{f['start_time']}] \"{request}\" {f['status']} {_bare(f['cause'])} {f['bytes_in']} {f['bytes_out']} "
            f"{f['duration_ms']} {f['upstream_ms']} {f['sidecar_ms']} {_quoted(f['user_agent'])} "
            f"{_quoted(f['request_id'])} {_quoted(f['authority'])} {_quoted(f['endpoint'])} {_bare(f['listener'])} "
            f"{_bare(f['route'])} {_bare(f['cluster'])} {f['attempts']} {'reset' if f['reset'] else '-'} "
            f"{_bare(f['trace_id'])} {_quoted(f['peer_identity'])}\n")


FORMATTERS: Final[dict[str, Callable[[RequestRecord, float, list[Any]], str]]] = {
    "json": json_line, "text": text_line}


class AccessLogSink:
    """Formats each logged request's line on the loop; a writer thread writes them (see the module doc).

    A `RecordSink` (a protocol: the request path's modules are compiled, and an interpreted class cannot
    subclass a compiled one, so it implements the protocol without inheriting)."""

    def __init__(self, path: str, line_format: str, success_sample: float, dropped: Counter, *,
                 rng: random.Random | None = None, wall: Callable[[], float] = time.time,
                 queue_lines: int = QUEUE_LINES) -> None:
        self.path = path
        self._format = FORMATTERS[line_format]
        self._sample = success_sample
        self._rng = rng or random.Random()
        self._wall = wall
        self._dropped = dropped
        self._max = queue_lines
        self._cache: list[Any] = [None, ""]
        # deque append and popleft are atomic under the GIL: the loop appends, the writer pops.
        self._lines: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._flush_now = threading.Event()
        self._reopen = False
        self._closing = False
        self._failing = False
        self._fd = self._open()
        self._thread = threading.Thread(target=self._run, name=f"access log {path}", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------------------------------

    def record(self, request: RequestRecord) -> None:
        sample = self._sample
        if sample < 1.0 and not is_error(request) and (sample <= 0.0 or self._rng.random() >= sample):
            return
        lines = self._lines
        if len(lines) >= self._max or self._closing:
            self._dropped.inc()
            return
        lines.append(self._format(request, self._wall(), self._cache))
        if not self._wake.is_set():
            self._wake.set()

    def reopen(self) -> None:
        """SIGUSR1: open the path again before the next write (logrotate renamed the old file)."""
        self._reopen = True
        self._flush_now.set()
        self._wake.set()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write every queued line, then stop the writer and close the file (blocks up to `timeout`: call
        it in a thread, as `aclose` does, or at exit)."""
        self._closing = True
        self._flush_now.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("access log %s: the writer did not finish in %gs; %d line(s) not written", self.path,
                        timeout, len(self._lines))

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        await asyncio.to_thread(self.close, timeout)

    # -- the writer thread ------------------------------------------------------------------------------

    def _open(self) -> int:
        stream = _STREAM_FDS.get(self.path)
        if stream is not None:
            return stream
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OSError(exc.errno, f"access_log.path {self.path}: {exc.strerror or exc}") from None

    def _close_fd(self) -> None:
        if self.path not in _STREAM_FDS:
            os.close(self._fd)

    def _run(self) -> None:
        lines = self._lines
        while True:
            self._wake.wait()
            if not self._closing:
                self._flush_now.wait(FLUSH_INTERVAL)  # let a batch gather
                self._flush_now.clear()
            self._wake.clear()
            if self._reopen:
                self._reopen = False
                self._do_reopen()
            while lines:
                batch: list[str] = []
                while lines and len(batch) < BATCH_LINES:
                    batch.append(lines.popleft())
                self._write("".join(batch).encode("utf-8", "replace"), len(batch))
            if self._closing and not lines:
                self._close_fd()
                return

    def _do_reopen(self) -> None:
        try:
            fd = self._open()
        except OSError as exc:
            log.error("access log: cannot reopen: %s; still writing to the old file", exc.strerror)
            return
        old, self._fd = self._fd, fd
        if self.path not in _STREAM_FDS:
            os.close(old)

    def _write(self, data: bytes, count: int) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._dropped.inc(count)
            if not self._failing:  # once per failing spell, not once per batch
                self._failing = True
                log.error("access log %s: write failed: %s; lines are dropped (counted) until a write succeeds",
                          self.path, exc.strerror or exc)
            return
        if self._failing:
            self._failing = False
            log.info("access log %s: writing again", self.path)

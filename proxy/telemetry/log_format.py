"""The process log's formats (`--log-format text|json`) and the request ids its lines carry.

Owns `JsonFormatter` (one JSON object per line: time, level, logger, message, the worker's tag, and the
request's `request_id` and `trace_id` when the line is about a request), the text format string, and
`correlation`, which a module logging about a request calls (on that rare path only) to get the ids for
both the message text and `extra=`. Must not be called per request on a path that does not log.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

FORMATS: Final = ("text", "json")
# The extra attributes a line about a request carries (set through `extra=correlation(...)`).
CORRELATION_KEYS: Final = ("request_id", "trace_id")


def correlation(request_id: bytes, trace_id: bytes) -> dict[str, str]:
    """`extra=` for a log line about a request: its request id and trace id ("-" when it has none)."""
    return {"request_id": request_id.decode("latin-1") or "-", "trace_id": trace_id.decode("latin-1") or "-"}


def text_format(tag: str | None) -> str:
    """The text format: `TIME LEVEL [TAG] LOGGER: MESSAGE` (a line about a request names its ids in the
    message itself)."""
    where = f" {tag}" if tag else ""
    return f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, keys in a fixed order; `tag` names the worker (None in one process)."""

    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.tag:
            line["worker"] = self.tag
        for key in CORRELATION_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)
